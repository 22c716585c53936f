//! Margay IP address management.
//!
//! Pure allocation logic (pools, blocks, affinity, borrowing, release, GC
//! planning) over a compare-and-swap [`Store`](crate) trait, plus the gRPC
//! service the CNI plugin talks to.

/// Generated protobuf / gRPC types for `margay.v1` (see `proto/margay.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("margay.v1");
}
