//! Errors of the lab harness.

use std::path::PathBuf;

/// Anything that can go wrong while building or driving the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran but failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the reader.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {ns}: {source}")]
    Setns {
        /// The namespace name.
        ns: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A daemon did not become ready in time.
    #[error("{what} not ready after {secs:.1}s: {detail}")]
    NotReady {
        /// What we waited for.
        what: String,
        /// How long.
        secs: f64,
        /// The last thing we saw.
        detail: String,
    },
    /// The lab was asked for something it cannot do.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io {
            path: path.into(),
            source,
        }
    }
}
