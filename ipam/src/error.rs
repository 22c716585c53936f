//! Errors returned by the allocator (each maps to one gRPC code, see
//! [`crate::grpc`]).

use std::net::IpAddr;

use crate::cidr::Family;
use crate::store::StoreError;

/// Why an IPAM request failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The request itself is malformed (INVALID_ARGUMENT).
    #[error("invalid request: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// No enabled pool matches this node / family / hints (FAILED_PRECONDITION).
    #[error("no {family} pool matches: {reason}")]
    NoPool {
        /// Family asked for.
        family: Family,
        /// Details (hints, selector).
        reason: String,
    },
    /// Eligible pools have no free address (RESOURCE_EXHAUSTED).
    #[error("{family} pools exhausted for node {node}: {reason}")]
    Exhausted {
        /// Family asked for.
        family: Family,
        /// Node asking.
        node: String,
        /// Which limit stopped it (the IPAMConfiguration settings in play).
        reason: String,
    },
    /// A requested address is held by another handle (ALREADY_EXISTS).
    #[error("requested address {ip} is in use by {holder}")]
    InUse {
        /// The address.
        ip: IpAddr,
        /// Handle holding it.
        holder: String,
    },
    /// The datastore could not be reached, or writes kept failing
    /// (UNAVAILABLE: try again later).
    #[error("datastore unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
        /// Last store error, if any.
        #[source]
        source: Option<StoreError>,
    },
    /// Compare-and-swap retries exhausted under contention (ABORTED: retry).
    #[error("gave up after {attempts} conflicting attempts on block {block}")]
    Aborted {
        /// Attempts made.
        attempts: u32,
        /// Last block that conflicted.
        block: String,
    },
    /// The allocator task is gone (agent shutting down) (UNAVAILABLE).
    #[error("allocator stopped")]
    Stopped,
}
