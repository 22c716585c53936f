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
//! - [`bench`]: the benchmark driver (any store).
//!
//! In the agent:
//! ```ignore
//! let store: Arc<dyn ipam::Store> = Arc::new(KubeStore::new(client, metrics));
//! let alloc = ipam::Allocator::spawn(store.clone(), node, config,
//!     ipam::AllocatorOptions::default(), Arc::new(ipam::SystemClock));
//! alloc.follow_block_watch(store.clone());            // optional, fewer conflicts
//! let routes = ipam::grpc::ipam_routes(alloc.clone())
//!     .add_service(EndpointsServer::new(endpoints));
//! ipam::grpc::serve(Path::new(ipam::grpc::DEFAULT_SOCKET), routes, shutdown).await?;
//! ```
//! In the CNI plugin:
//! ```ignore
//! let mut c = ipam::grpc::connect_uds(ipam::grpc::DEFAULT_SOCKET).await?;
//! let reply = c.allocate(ipam::proto::AllocateRequest { handle, .. }).await?;
//! ```

pub mod alloc;
pub mod bench;
pub mod cidr;
pub mod count;
pub mod error;
pub mod gc;
pub mod grpc;
pub mod memstore;
pub mod model;
pub mod report;
pub mod selector;
pub mod store;
pub mod testsupport;

pub use alloc::{
    AllocRequest, Allocator, AllocatorMetrics, AllocatorOptions, Assigned, Clock, HandleInfo,
    ManualClock, NodeInfo, ReleaseTarget, StatusInfo, SystemClock,
};
pub use cidr::{Cidr, Family};
pub use count::Count;
pub use error::IpamError;
pub use model::{IpPoolSpec, IpamBlockSpec, IpamConfig};
pub use store::{BlockEvent, BlockObject, PoolObject, Store, StoreError, Versioned};

/// Generated protobuf / gRPC types for `margay.v1` (see `proto/margay.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("margay.v1");
}
