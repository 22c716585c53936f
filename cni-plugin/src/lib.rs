//! `margay`, the CNI plugin of Margay.
//!
//! The binary (`src/main.rs`) reads the `CNI_*` environment and stdin and
//! calls [`run`]; everything else is here so tests can reach it.
//!
//! ```text
//!  runtime ──env+stdin──► run ─► VERSION: answered at once (no env checks)
//!                               ├► parse config (6/1/7) ─► log init
//!                               └► current-thread tokio ─► add | del | check | gc | status
//!                                       │ gRPC over unix socket  │ rtnetlink per netns
//!                                       ▼                        ▼
//!                                 margay-node agent        node / pod namespaces
//! ```

pub mod add;
pub mod admin;
pub mod agent;
pub mod check;
pub mod config;
pub mod del;
pub mod env;
pub mod error;
pub mod journal;
pub mod logging;
pub mod netlink;
pub mod result;
pub mod version;
pub mod wiring;

use serde_json::json;

use crate::env::{Attachment, Command, RawEnv};
use crate::error::{CniError, fallback_version};
use crate::version::{CniVersion, SUPPORTED};

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// JSON for stdout, if any.
    pub stdout: Option<String>,
    /// Exit status 0?
    pub success: bool,
}

impl Output {
    fn ok(v: Option<serde_json::Value>) -> Self {
        Output {
            stdout: v.map(|v| v.to_string()),
            success: true,
        }
    }

    /// The error result for `e`, in version `version`.
    pub fn error(e: &CniError, version: &str) -> Self {
        Output {
            stdout: Some(e.to_json(version).to_string()),
            success: false,
        }
    }
}

/// Runs one CNI invocation.
pub fn run(env: &RawEnv, stdin: &[u8]) -> Output {
    run_in(env, stdin).0
}

/// As [`run`], and hands back the runtime the command ran on (None when
/// it needed none) with what its tasks still hold: netlink sockets, the
/// agent's connection. A process about to exit leaves those to the kernel
/// (`std::process::exit` with the runtime alive) instead of tearing them
/// down one by one after the result is known.
pub fn run_in(env: &RawEnv, stdin: &[u8]) -> (Output, Option<tokio::runtime::Runtime>) {
    let cmd = match env.command() {
        Ok(c) => c,
        Err(e) => return (Output::error(&e, fallback_version()), None),
    };
    if cmd == Command::Version {
        // podman calls VERSION with dummy CNI_NETNS / CNI_IFNAME: check nothing.
        let v = config::version_request_version(stdin);
        let supported: Vec<&str> = SUPPORTED.iter().map(|v| v.as_str()).collect();
        return (
            Output::ok(Some(
                json!({ "cniVersion": v, "supportedVersions": supported }),
            )),
            None,
        );
    }
    let att = match cmd {
        Command::Add | Command::Del | Command::Check => match Attachment::from_env(env, cmd) {
            Ok(a) => Some(a),
            Err(e) => {
                let v = config::version_request_version(stdin);
                return (Output::error(&e, &v), None);
            }
        },
        _ => None,
    };
    let req = match config::parse_request(stdin) {
        Ok(r) => r,
        Err(e) => return (Output::error(&e.error, &e.version), None),
    };
    let v = req.version;
    if let Err(e) = verb_allowed(cmd, v) {
        return (Output::error(&e, v.as_str()), None);
    }
    logging::init(&req.conf);
    let span = tracing::info_span!(
        "cni",
        cmd = cmd.as_str(),
        container = att.as_ref().map_or("", |a| a.container_id.as_str()),
        pod = %att
            .as_ref()
            .and_then(|a| a.args.pod_key())
            .unwrap_or_default(),
    );
    let _enter = span.enter();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let e = CniError::Io {
                what: "tokio runtime",
                source,
            };
            return (Output::error(&e, v.as_str()), None);
        }
    };
    let conf = &req.conf;
    let res = rt.block_on(async {
        match (cmd, &att) {
            (Command::Add, Some(a)) => add::add(conf, v, a).await.map(Some),
            (Command::Del, Some(a)) => del::del(conf, a).await.map(|()| None),
            (Command::Check, Some(a)) => check::check(conf, a).await.map(|()| None),
            (Command::Gc, _) => admin::gc(conf).await.map(|()| None),
            (Command::Status, _) => admin::status(conf).await.map(|()| None),
            _ => Err(CniError::InvalidEnv {
                var: "CNI_COMMAND",
                reason: "unexpected command".into(),
            }),
        }
    });
    let out = match res {
        Ok(out) => Output::ok(out),
        Err(e) => {
            tracing::error!(code = e.code(), error = %e.details(), "failed");
            Output::error(&e, v.as_str())
        }
    };
    (out, Some(rt))
}

fn verb_allowed(cmd: Command, v: CniVersion) -> Result<(), CniError> {
    let ok = match cmd {
        Command::Check => v.has_check(),
        Command::Gc | Command::Status => v.has_gc_and_status(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion {
            requested: v.as_str().into(),
            reason: format!("config version {v} does not allow {}", cmd.as_str()),
        })
    }
}
