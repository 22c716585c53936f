//! The protocol between the CNI plugin (`margay`) and the node agent
//! (`margay-node`), in one small crate that both depend on:
//!
//! - [`proto`]: `margay.v1`, generated from `proto/margay.proto` (the
//!   `Ipam` service: Allocate, Release, GetHandle, GarbageCollect, Status;
//!   the `Endpoints` service: EndpointUp, EndpointDown). The proto file's
//!   header says how errors map to gRPC codes.
//! - [`uds`]: the unix socket both services are served on (mode 0600,
//!   never reachable with a wider mode) and the clients that dial it.
//!
//! The `ipam` crate implements the `Ipam` service over its allocator
//! (`ipam::grpc::IpamService`); the agent adds `Endpoints`.

pub mod uds;

/// Generated protobuf / gRPC types for `margay.v1` (see `proto/margay.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("margay.v1");
}
