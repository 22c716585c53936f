//! Margay IP address management.
//!
//! Pure allocation logic (pools, blocks, affinity, borrowing, release, GC
//! planning) over a compare-and-swap [`Store`] trait, plus the `Ipam` gRPC
//! service (its protocol is the `cni-proto` crate) the CNI plugin talks to.
//!
//! - [`model`]: `IPPool` / `IPAMBlock` specs and [`IpamConfig`] (serde, camelCase).
//! - [`store`]: the [`Store`] trait (object-safe, CAS) and `memstore::MemStore` (testkit).
//! - [`alloc`]: the per-node [`Allocator`] with group commit.
//! - [`gc`]: leak GC planning; [`report`]: data for `margayctl ipam show/check`.
//! - [`grpc`]: the `Ipam` tonic service over the allocator.
//! - [`reserve`]: addresses reserved ahead of demand (an Allocate with no write).
//! - `bench`: the benchmark driver (any store); with `memstore` and
//!   `testsupport`, behind the `testkit` feature (test kits only).
//!
//! In the agent:
//! ```ignore
//! let store: Arc<dyn ipam::Store> = Arc::new(KubeStore::new(client, metrics));
//! let alloc = ipam::Allocator::spawn(store.clone(), node, config,
//!     ipam::AllocatorOptions::default(), Arc::new(ipam::SystemClock));
//! alloc.follow_block_watch(store.clone());            // optional, fewer conflicts
//! let routes = ipam::grpc::ipam_routes(alloc.clone())
//!     .add_service(EndpointsServer::new(endpoints));
//! cni_proto::uds::serve(Path::new(cni_proto::uds::DEFAULT_SOCKET), routes, shutdown).await?;
//! ```
//! In the CNI plugin:
//! ```ignore
//! let mut c = cni_proto::uds::connect_uds(cni_proto::uds::DEFAULT_SOCKET).await?;
//! let reply = c.allocate(cni_proto::proto::AllocateRequest { handle, .. }).await?;
//! ```

pub mod alloc;
// Test kits: for this crate's tests and, with the `testkit` feature, for
// the test suites and benchmarks of the crates that use it; never in a
// production build.
#[cfg(any(test, feature = "testkit"))]
pub mod bench;
pub mod cidr;
pub mod count;
pub mod error;
pub mod gc;
pub mod grpc;
#[cfg(any(test, feature = "testkit"))]
pub mod memstore;
pub mod model;
pub mod report;
pub mod reserve;
/// Label selectors (pool node selectors): the workspace's one
/// implementation, in `margay-types`.
pub use margay_types::selector;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testsupport;

pub use alloc::{
    AllocRequest, Allocator, AllocatorMetrics, AllocatorOptions, Assigned, Clock, HandleInfo,
    ManualClock, NodeInfo, ReleaseTarget, StatusInfo, SystemClock,
};
pub use cidr::{Cidr, Family};
pub use count::Count;
pub use error::IpamError;
pub use model::{IpamBlockSpec, IpamConfig, PoolParams};
pub use store::{BlockEvent, BlockObject, PoolObject, Store, StoreError, Versioned};
