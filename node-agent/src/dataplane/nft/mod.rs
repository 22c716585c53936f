//! Policy dataplane: applies the `policy` crate's nftables batches to the
//! kernel of the current network namespace by running `nft -j -f -`.
//!
//! ```text
//!  policy::Engine::commit ──&Batch──► NftCli::apply ──stdin──► nft -j -f -  (one transaction)
//! ```
//!
//! [`NftCli`] runs one `nft` process per batch; [`NftSession`] keeps one
//! `nft -j -i` running and feeds it a batch per line (much faster, see its
//! docs). Either way a batch is one kernel transaction: it applies
//! completely or not at all. `nft` runs in the
//! network namespace of the calling thread (a child inherits it), so a
//! thread that has entered a namespace applies there.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::{Command, Stdio};

use policy::Batch;
use policy::NftSink;

pub mod nfnl;
pub mod session;

pub use nfnl::FastSink;
pub use session::NftSession;

/// The policy crate this dataplane drives (re-exported for lab tests and
/// benchmarks that depend on `node-agent` only).
pub use policy;

/// Why a batch did not apply.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("serializing the nftables batch")]
    Encode(#[source] serde_json::Error),
    #[error("running {program:?}")]
    Spawn {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} rejected the batch ({status}): {stderr}")]
    Rejected {
        program: OsString,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("nft session rejected the batch: {stderr}")]
    BatchRejected { stderr: String },
    #[error("reading the rule counters of an nft listing")]
    Listing(#[from] policy::counters::CounterError),
    #[error("{program:?} printed invalid JSON")]
    Decode {
        program: OsString,
        #[source]
        source: serde_json::Error,
    },
}

/// Runs `nft` (or a wrapper such as `ip netns exec NS nft`).
#[derive(Debug, Clone)]
pub struct NftCli {
    program: OsString,
    prefix_args: Vec<OsString>,
    /// Batches applied (for metrics).
    pub applied: u64,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli::new()
    }
}

impl NftCli {
    /// `nft` from `PATH`, in the calling thread's network namespace.
    pub fn new() -> NftCli {
        NftCli {
            program: "nft".into(),
            prefix_args: Vec::new(),
            applied: 0,
        }
    }

    /// A custom program with arguments before nft's own, e.g.
    /// `("ip", ["netns", "exec", "NS", "nft"])`.
    pub fn with_program<I, S>(program: impl Into<OsString>, prefix_args: I) -> NftCli
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        NftCli {
            program: program.into(),
            prefix_args: prefix_args.into_iter().map(Into::into).collect(),
            applied: 0,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix_args);
        c
    }

    /// Runs `nft -j -f -` with `payload` on stdin; returns stdout.
    pub fn run_json(&self, payload: &str, extra: &[&str]) -> Result<String, NftError> {
        let mut child = self
            .command()
            .args(extra)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft died early; its status says why.
            let _ = stdin.write_all(payload.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NftError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(NftError::Rejected {
                program: self.program.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The current `table inet margay` as JSON (`None` if there is none).
    pub fn list_table(&self) -> Result<Option<serde_json::Value>, NftError> {
        self.list_named_table(policy::ruleset::TABLE)
    }

    /// Every counted policy rule of `inet margay` and `inet margay_host`
    /// (one `nft -t -j list table` each; a missing table has none). Terse:
    /// without the sets' elements, which the counters do not need and
    /// which at 30k pods were a 30 MB JSON document parsed at every
    /// metrics scrape (the agent's peak heap, docs/scale.md).
    pub fn rule_counters(&self) -> Result<Vec<policy::counters::RuleCounter>, NftError> {
        let mut out = Vec::new();
        for t in [policy::ruleset::TABLE, policy::host::HOST_TABLE] {
            if let Some(v) = self.list_table_as(t, true)? {
                out.extend(policy::counters::parse_listing(&v)?);
            }
        }
        Ok(out)
    }

    /// `table inet <name>` as JSON (`None` if there is none).
    pub fn list_named_table(&self, name: &str) -> Result<Option<serde_json::Value>, NftError> {
        self.list_table_as(name, false)
    }

    /// [`NftCli::list_named_table`], `terse` without set elements (`nft -t`).
    fn list_table_as(
        &self,
        name: &str,
        terse: bool,
    ) -> Result<Option<serde_json::Value>, NftError> {
        let out = self
            .command()
            .args(if terse {
                &["-t", "-j"][..]
            } else {
                &["-j"][..]
            })
            .args(["list", "table", "inet", name])
            .output()
            .map_err(|source| NftError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NftError::Rejected {
                program: self.program.clone(),
                status: out.status,
                stderr: stderr.trim().to_string(),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|source| NftError::Decode {
                program: self.program.clone(),
                source,
            })
    }

    /// Removes `table inet margay` if present (uninstall). nft 1.0.6 has
    /// no `destroy`: add (a no-op if present) then delete, one transaction.
    pub fn remove_table(&mut self) -> Result<(), NftError> {
        let t = policy::ruleset::TABLE;
        let payload = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": t}}},
            {"delete": {"table": {"family": "inet", "name": t}}},
        ]});
        self.run_json(&payload.to_string(), &[]).map(|_| ())
    }
}

impl NftSink for NftCli {
    type Error = NftError;

    fn apply(&mut self, batch: &Batch) -> Result<(), NftError> {
        let payload = batch.to_json().map_err(NftError::Encode)?;
        let span = tracing::debug_span!("nft_apply", bytes = payload.len());
        let _g = span.enter();
        self.run_json(&payload, &[])?;
        self.applied += 1;
        Ok(())
    }

    fn apply_full(&mut self, rs: &policy::Ruleset) -> Result<(), NftError> {
        let payload = policy::nft::full_json(rs).map_err(NftError::Encode)?;
        let span = tracing::debug_span!("nft_apply_full", bytes = payload.len());
        let _g = span.enter();
        self.run_json(&payload, &[])?;
        self.applied += 1;
        Ok(())
    }
}

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod tests;
