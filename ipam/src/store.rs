//! The datastore edge: a compare-and-swap store of pools (read-only for IPAM)
//! and blocks (created, updated and deleted only with a resourceVersion
//! precondition).
//!
//! The trait is object-safe (methods return boxed futures), so the allocator
//! and the gRPC service hold an `Arc<dyn Store>` and never become generic: the
//! agent implements it once over kube `Api<IPPool>` / `Api<IPAMBlock>` and
//! hands it over. The boxing costs one allocation per call, nothing next to an
//! API round trip.
//!
//! Mapping for the Kubernetes implementation:
//! - `create_block` → `POST` (409 AlreadyExists → [`StoreError::AlreadyExists`]);
//! - `update_block` → `PUT` with `metadata.resourceVersion` set (409 Conflict →
//!   [`StoreError::Conflict`], 404 → [`StoreError::NotFound`]);
//! - `delete_block` → `DELETE` with `preconditions.resourceVersion`;
//! - connection errors, 5xx, 429 and timeouts → [`StoreError::Unavailable`];
//! - `list_*` may be served from a watch-fed cache: the allocator tolerates
//!   stale reads because every write is a CAS.

use std::fmt;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::model::{IpamBlockSpec, PoolParams};

/// A stored object: name, opaque resourceVersion, spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// Object name (for blocks: [`crate::model::block_name`] of the CIDR).
    pub name: String,
    /// Opaque version token, compared for equality only.
    pub resource_version: String,
    /// The spec.
    pub spec: T,
}

/// A stored block.
pub type BlockObject = Versioned<IpamBlockSpec>;
/// A stored pool.
pub type PoolObject = Versioned<PoolParams>;

/// Which kind of object an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `IPPool`.
    Pool,
    /// `IPAMBlock`.
    Block,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Pool => "IPPool",
            Kind::Block => "IPAMBlock",
        })
    }
}

/// Store failures the allocator distinguishes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resourceVersion precondition failed: someone else wrote first.
    #[error("{kind} {name}: resourceVersion conflict")]
    Conflict {
        /// Object kind.
        kind: Kind,
        /// Object name.
        name: String,
    },
    /// `create` of a name that exists.
    #[error("{kind} {name} already exists")]
    AlreadyExists {
        /// Object kind.
        kind: Kind,
        /// Object name.
        name: String,
    },
    /// The object is gone.
    #[error("{kind} {name} not found")]
    NotFound {
        /// Object kind.
        kind: Kind,
        /// Object name.
        name: String,
    },
    /// The datastore cannot be reached or refused to serve (maps to gRPC
    /// UNAVAILABLE, CNI error 11). The write may or may not have happened.
    #[error("datastore unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
        /// Underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The stored object cannot be decoded.
    #[error("{kind} {name} is malformed: {reason}")]
    Invalid {
        /// Object kind.
        kind: Kind,
        /// Object name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// An `Unavailable` without a source.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }
}

/// A change to the set of blocks.
#[derive(Clone, Debug)]
pub enum BlockEvent {
    /// Created or updated.
    Applied(BlockObject),
    /// Deleted.
    Deleted {
        /// Name of the deleted block.
        name: String,
    },
    /// The watch restarted: this is the complete current set.
    Resync(Vec<BlockObject>),
}

/// A compare-and-swap store of IPAM objects. See the module docs for the
/// contract and the Kubernetes mapping.
pub trait Store: Send + Sync + 'static {
    /// All pools.
    fn list_pools(&self) -> BoxFuture<'_, Result<Vec<PoolObject>, StoreError>>;

    /// All blocks.
    fn list_blocks(&self) -> BoxFuture<'_, Result<Vec<BlockObject>, StoreError>>;

    /// One block, `None` if absent. Must read the latest version (not a cache):
    /// the allocator calls it after a conflict.
    fn get_block<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BlockObject>, StoreError>>;

    /// Creates a block; fails with `AlreadyExists` if the name is taken.
    /// Returns the stored object with its new resourceVersion.
    fn create_block<'a>(
        &'a self,
        name: &'a str,
        spec: &'a IpamBlockSpec,
    ) -> BoxFuture<'a, Result<BlockObject, StoreError>>;

    /// Replaces a block if its resourceVersion still equals
    /// `obj.resource_version` (`Conflict` otherwise, `NotFound` if gone).
    fn update_block<'a>(
        &'a self,
        obj: &'a BlockObject,
    ) -> BoxFuture<'a, Result<BlockObject, StoreError>>;

    /// Deletes a block if its resourceVersion still equals `resource_version`.
    fn delete_block<'a>(
        &'a self,
        name: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Block changes from now on. The first item should be a
    /// [`BlockEvent::Resync`] with the full set. The stream ends or yields an
    /// error when the watch breaks; callers re-subscribe.
    fn watch_blocks(&self) -> BoxStream<'static, Result<BlockEvent, StoreError>>;
}
