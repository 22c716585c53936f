//! Margay IP address management.
//!
//! Pure allocation logic (pools, blocks, affinity, borrowing, release, GC
//! planning) over a compare-and-swap [`Store`] trait, plus the gRPC
//! service the CNI plugin talks to.
//!
//! - [`model`]: `IPPool` / `IPAMBlock` specs and [`IpamConfig`] (serde, camelCase).
//! - [`store`]: the [`Store`] trait (object-safe, CAS) and [`memstore::MemStore`].
//! - [`alloc`]: the per-node [`Allocator`] with group commit.
//! - [`gc`]: leak GC planning; [`report`]: data for `margayctl ipam show/check`.
//! - [`grpc`]: the `Ipam` tonic service, unix-socket `serve` and `connect_uds`.

pub mod alloc;
pub mod bench;
pub mod cidr;
pub mod error;
pub mod gc;
pub mod grpc;
pub mod memstore;
pub mod model;
pub mod report;
pub mod selector;
pub mod store;

pub use alloc::{
    AllocRequest, Allocator, AllocatorMetrics, AllocatorOptions, Assigned, Clock, HandleInfo,
    ManualClock, NodeInfo, ReleaseTarget, StatusInfo, SystemClock,
};
pub use cidr::{Cidr, Family};
pub use error::IpamError;
pub use model::{IpPoolSpec, IpamBlockSpec, IpamConfig};
pub use store::{BlockEvent, BlockObject, PoolObject, Store, StoreError, Versioned};

/// Generated protobuf / gRPC types for `margay.v1` (see `proto/margay.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("margay.v1");
}
