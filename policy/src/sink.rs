//! The edge to the kernel: something that applies one nftables batch as one
//! transaction. `node-agent` implements it with `nft -j -f -`; tests use
//! [`CapturingSink`].

use crate::batch::Batch;
use crate::ruleset::Ruleset;

/// Applies nftables batches atomically (all or nothing).
pub trait NftSink {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies `batch` as one transaction.
    fn apply(&mut self, batch: &Batch) -> Result<(), Self::Error>;

    /// Replaces the table with `rs` as one transaction: [`crate::nft::full`].
    /// Sinks that take JSON text override it to write
    /// [`crate::nft::full_json`], which never holds every set element as
    /// an expression tree at once.
    fn apply_full(&mut self, rs: &Ruleset) -> Result<(), Self::Error> {
        self.apply(&crate::nft::full(rs))
    }
}

/// Error of [`CapturingSink`] when told to fail.
#[derive(Debug, thiserror::Error)]
#[error("capturing sink: injected failure of batch {0}")]
pub struct InjectedFailure(pub usize);

/// Records every batch (as JSON values); can be told to fail some of them.
#[derive(Debug, Default)]
pub struct CapturingSink {
    pub batches: Vec<serde_json::Value>,
    /// Fail the next this many batches (not recorded).
    pub fail_next: usize,
}

impl NftSink for CapturingSink {
    type Error = InjectedFailure;

    fn apply(&mut self, batch: &Batch) -> Result<(), Self::Error> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(InjectedFailure(self.batches.len()));
        }
        // Serializing these plain data types cannot fail.
        self.batches
            .push(serde_json::to_value(batch).unwrap_or(serde_json::Value::Null));
        Ok(())
    }
}
