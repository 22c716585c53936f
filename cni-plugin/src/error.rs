//! The plugin's error enum and its one mapping to the CNI error result.

use std::io;
use std::path::PathBuf;

use serde_json::json;

use crate::version::CniVersion;

/// Everything that can make a CNI invocation fail.
///
/// [`CniError::code`] and [`CniError::to_json`] are the only places that decide
/// what the runtime sees.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration asks for a spec version we do not speak, or a verb
    /// that its version does not have.
    #[error("incompatible CNI version {requested:?}: {reason}")]
    IncompatibleVersion {
        /// The version the caller asked for.
        requested: String,
        /// Why it is refused.
        reason: String,
    },
    /// A required `CNI_*` variable is missing or malformed.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv {
        /// The variable name.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the request failed.
    #[error("I/O failure reading {what}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The request is not valid JSON.
    #[error("failed to decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is valid but not a configuration we accept.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// A transient condition: the agent is unreachable, busy or its API
    /// server is down. The runtime should retry.
    #[error("margay agent unavailable during {op}: {msg}")]
    TryAgain {
        /// The operation that failed (connect, Allocate, ...).
        op: &'static str,
        /// Why.
        msg: String,
    },
    /// STATUS: the plugin cannot service ADD requests.
    #[error("plugin not available: {reason}")]
    NotAvailable {
        /// Why.
        reason: String,
    },
    /// No free address in any eligible pool.
    #[error("IP pool exhausted: {msg}")]
    PoolExhausted {
        /// The agent's message.
        msg: String,
    },
    /// No pool matches the request (hints, family, node selector).
    #[error("no IP pool matches the request: {msg}")]
    NoPoolMatches {
        /// The agent's message.
        msg: String,
    },
    /// A requested address is already in use.
    #[error("requested address in use: {msg}")]
    AddressInUse {
        /// The agent's message.
        msg: String,
    },
    /// The container already has an interface of the requested name.
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists {
        /// CNI_IFNAME.
        ifname: String,
        /// CNI_NETNS.
        netns: String,
    },
    /// The container's network namespace cannot be used.
    #[error("network namespace {path}: {reason}")]
    Netns {
        /// CNI_NETNS.
        path: PathBuf,
        /// What failed.
        reason: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {op}")]
    Netlink {
        /// What was being done ("create veth cali123 / eth0").
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A sysctl write failed.
    #[error("sysctl {path}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// CHECK found the attachment not as ADD left it.
    #[error("CHECK failed: {}", problems.join("; "))]
    CheckFailed {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The agent answered something the plugin cannot use.
    #[error("unusable answer from margay agent to {op}: {msg}")]
    AgentProtocol {
        /// The RPC.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The agent failed the request for a reason without a dedicated code.
    #[error("margay agent failed {op}: {code:?}: {msg}")]
    Agent {
        /// The RPC.
        op: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        msg: String,
    },
    /// GC could not clean up everything.
    #[error("GC incomplete: {}", errors.join("; "))]
    GcIncomplete {
        /// Each failure.
        errors: Vec<String>,
    },
}

/// Well-known and Margay-specific CNI error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Margay: pool exhausted.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// Margay: no pool matches.
    pub const NO_POOL_MATCHES: u32 = 101;
    /// Margay: requested address in use.
    pub const ADDRESS_IN_USE: u32 = 102;
    /// Margay: the container interface already exists.
    pub const INTERFACE_EXISTS: u32 = 103;
    /// Margay: the network namespace cannot be used.
    pub const NETNS: u32 = 104;
    /// Margay: a kernel (netlink, sysctl) operation failed.
    pub const KERNEL: u32 = 105;
    /// Margay: CHECK found a difference.
    pub const CHECK_FAILED: u32 = 106;
    /// Margay: the agent's answer is unusable.
    pub const AGENT_PROTOCOL: u32 = 107;
    /// Margay: GC left something behind.
    pub const GC_INCOMPLETE: u32 = 108;
    /// Margay: the agent failed without a dedicated code.
    pub const AGENT_OTHER: u32 = 999;
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniError::InvalidEnv { .. } => code::INVALID_ENV,
            CniError::Io { .. } => code::IO_FAILURE,
            CniError::Decode { .. } => code::DECODING_FAILURE,
            CniError::InvalidConfig(_) => code::INVALID_CONFIG,
            CniError::TryAgain { .. } => code::TRY_AGAIN,
            CniError::NotAvailable { .. } => code::NOT_AVAILABLE,
            CniError::PoolExhausted { .. } => code::POOL_EXHAUSTED,
            CniError::NoPoolMatches { .. } => code::NO_POOL_MATCHES,
            CniError::AddressInUse { .. } => code::ADDRESS_IN_USE,
            CniError::InterfaceExists { .. } => code::INTERFACE_EXISTS,
            CniError::Netns { .. } => code::NETNS,
            CniError::Netlink { .. } | CniError::Sysctl { .. } => code::KERNEL,
            CniError::CheckFailed { .. } => code::CHECK_FAILED,
            CniError::AgentProtocol { .. } => code::AGENT_PROTOCOL,
            CniError::GcIncomplete { .. } => code::GC_INCOMPLETE,
            CniError::Agent { .. } => code::AGENT_OTHER,
        }
    }

    /// The short `msg` of the CNI error result.
    pub fn short(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } => "incompatible CNI version",
            CniError::InvalidEnv { .. } => "invalid environment variables",
            CniError::Io { .. } => "I/O failure",
            CniError::Decode { .. } => "failed to decode content",
            CniError::InvalidConfig(_) => "invalid network configuration",
            CniError::TryAgain { .. } => "margay agent unavailable, try again later",
            CniError::NotAvailable { .. } => "margay is not available",
            CniError::PoolExhausted { .. } => "IP pool exhausted",
            CniError::NoPoolMatches { .. } => "no IP pool matches",
            CniError::AddressInUse { .. } => "requested IP address in use",
            CniError::InterfaceExists { .. } => "container interface already exists",
            CniError::Netns { .. } => "container network namespace unusable",
            CniError::Netlink { .. } => "netlink operation failed",
            CniError::Sysctl { .. } => "sysctl write failed",
            CniError::CheckFailed { .. } => "CHECK failed",
            CniError::AgentProtocol { .. } => "unusable answer from margay agent",
            CniError::GcIncomplete { .. } => "GC incomplete",
            CniError::Agent { .. } => "margay agent error",
        }
    }

    /// The full message with every `source` in the chain.
    pub fn details(&self) -> String {
        let mut out = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            out.push_str(": ");
            out.push_str(&e.to_string());
            src = e.source();
        }
        out
    }

    /// The CNI error result printed on stdout. `version` is the caller's
    /// spec version when it is known (a string, so an unsupported but
    /// well-formed version can be echoed back).
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        json!({
            "cniVersion": version,
            "code": self.code(),
            "msg": self.short(),
            "details": self.details(),
        })
    }
}

/// The version to put in an error result when the request's own version
/// could not be determined.
pub fn fallback_version() -> &'static str {
    CniVersion::LATEST.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_codes() {
        let e = CniError::TryAgain {
            op: "connect",
            msg: "no such file".into(),
        };
        let j = e.to_json("0.4.0");
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(j["code"], 11);
        assert!(j["msg"].as_str().is_some_and(|m| m.contains("try again")));
        assert!(
            j["details"]
                .as_str()
                .is_some_and(|d| d.contains("no such file"))
        );
    }

    #[test]
    fn details_include_sources() {
        let e = CniError::Io {
            what: "stdin",
            source: io::Error::other("pipe closed"),
        };
        assert_eq!(e.code(), 5);
        assert_eq!(e.details(), "I/O failure reading stdin: pipe closed");
    }

    #[test]
    fn margay_codes_are_plugin_range() {
        let e = CniError::PoolExhausted { msg: "x".into() };
        assert!(e.code() >= 100);
        let e = CniError::CheckFailed {
            problems: vec!["a".into(), "b".into()],
        };
        assert_eq!(e.to_string(), "CHECK failed: a; b");
    }
}
