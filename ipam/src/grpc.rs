//! The `margay.v1.Ipam` gRPC service over an [`Allocator`] (the protocol
//! and its unix socket are the `cni-proto` crate's).
//!
//! Serving both services on one socket (in the agent):
//! ```ignore
//! let routes = ipam::grpc::ipam_routes(allocator)
//!     .add_service(EndpointsServer::new(my_endpoints));
//! cni_proto::uds::serve(Path::new(DEFAULT_SOCKET), routes, shutdown).await?;
//! ```
//! Error mapping (the proto header): RESOURCE_EXHAUSTED pool exhausted,
//! FAILED_PRECONDITION no pool matches, ALREADY_EXISTS requested address in
//! use, UNAVAILABLE datastore down / agent stopping, ABORTED CAS retries
//! exhausted, INVALID_ARGUMENT malformed request.

use std::collections::HashSet;
use std::net::IpAddr;

use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tracing::{info_span, warn};

use crate::alloc::{AllocRequest, Allocator, Assigned};
use crate::cidr::Family;
use crate::error::IpamError;
use crate::model::AllocationAttrs;
use cni_proto::proto;
use cni_proto::proto::ipam_server::{Ipam, IpamServer};

/// The gRPC status for an allocator error.
pub fn status_of(e: &IpamError) -> Status {
    let msg = e.to_string();
    match e {
        IpamError::InvalidArgument { .. } => Status::invalid_argument(msg),
        IpamError::NoPool { .. } => Status::failed_precondition(msg),
        IpamError::Exhausted { .. } => Status::resource_exhausted(msg),
        IpamError::InUse { .. } => Status::already_exists(msg),
        IpamError::Unavailable { .. } | IpamError::Stopped => Status::unavailable(msg),
        IpamError::Aborted { .. } => Status::aborted(msg),
    }
}

/// The `Ipam` service implementation.
#[derive(Clone)]
pub struct IpamService {
    alloc: Allocator,
}

impl IpamService {
    /// Wraps an allocator.
    pub fn new(alloc: Allocator) -> Self {
        IpamService { alloc }
    }
}

/// Routes with the `Ipam` service; add the agent's `Endpoints` service with
/// `.add_service(..)` and pass them to [`serve`].
pub fn ipam_routes(alloc: Allocator) -> Routes {
    Routes::new(IpamServer::new(IpamService::new(alloc)))
}

fn invalid(reason: impl Into<String>) -> Status {
    status_of(&IpamError::InvalidArgument {
        reason: reason.into(),
    })
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// One assigned address as the CNI API carries it.
pub fn to_proto(a: &Assigned) -> proto::AllocatedAddress {
    proto::AllocatedAddress {
        ip: a.ip.to_string(),
        block: a.block.to_string(),
        pool: a.pool.clone(),
        borrowed: a.borrowed,
    }
}

/// The allocator's request for a CNI `AllocateRequest` to node `node`
/// (INVALID_ARGUMENT for another node, an unknown family or a malformed
/// address).
pub fn parse_request(node: &str, r: proto::AllocateRequest) -> Result<AllocRequest, Status> {
    if !r.node.is_empty() && r.node != node {
        return Err(invalid(format!(
            "this agent serves node {node}, not {}",
            r.node
        )));
    }
    let mut families = Vec::new();
    for f in &r.families {
        families.push(match proto::Family::try_from(*f) {
            Ok(proto::Family::Ipv4) => Family::V4,
            Ok(proto::Family::Ipv6) => Family::V6,
            _ => return Err(invalid(format!("unknown family {f}"))),
        });
    }
    let mut requested_ips = Vec::new();
    for s in &r.requested_ips {
        let ip: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| invalid(format!("requested address {s:?} is not an IP address")))?;
        requested_ips.push(ip);
    }
    Ok(AllocRequest {
        handle: r.handle,
        attrs: AllocationAttrs {
            pod: opt(r.pod_name),
            namespace: opt(r.pod_namespace),
            node: None,
        },
        families,
        pool_hints: r.pool_hints,
        requested_ips,
        use_: None,
    })
}

impl IpamService {
    /// `Allocate`, telling `picked` the chosen addresses before the write
    /// that makes them durable ([`crate::Allocator::allocate_notify`]).
    pub async fn allocate_notify(
        &self,
        request: Request<proto::AllocateRequest>,
        picked: Option<crate::alloc::Picked>,
    ) -> Result<Response<proto::AllocateReply>, Status> {
        let r = request.into_inner();
        let span = info_span!("allocate", handle = %r.handle, pod = %format!("{}/{}", r.pod_namespace, r.pod_name));
        let _g = span.enter();
        let req = parse_request(self.alloc.node(), r)?;
        drop(_g);
        let res = match picked {
            Some(tx) => self.alloc.allocate_notify(req, tx).await,
            None => self.alloc.allocate(req).await,
        };
        let out = res.map_err(|e| {
            let _g = span.enter();
            warn!(error = %e, "allocation failed");
            status_of(&e)
        })?;
        Ok(Response::new(proto::AllocateReply {
            addresses: out.iter().map(to_proto).collect(),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Ipam for IpamService {
    async fn allocate(
        &self,
        request: Request<proto::AllocateRequest>,
    ) -> Result<Response<proto::AllocateReply>, Status> {
        self.allocate_notify(request, None).await
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseReply>, Status> {
        let h = request.into_inner().handle;
        let ips = self.alloc.release(&h).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::ReleaseReply {
            released_ips: ips.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn get_handle(
        &self,
        request: Request<proto::GetHandleRequest>,
    ) -> Result<Response<proto::GetHandleReply>, Status> {
        let h = request.into_inner().handle;
        let info = self.alloc.get_handle(&h).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(match info {
            None => proto::GetHandleReply::default(),
            Some(i) => proto::GetHandleReply {
                found: true,
                addresses: i.addresses.iter().map(to_proto).collect(),
                pod_namespace: i.attrs.namespace.unwrap_or_default(),
                pod_name: i.attrs.pod.unwrap_or_default(),
            },
        }))
    }

    async fn garbage_collect(
        &self,
        request: Request<proto::GarbageCollectRequest>,
    ) -> Result<Response<proto::GarbageCollectReply>, Status> {
        let r = request.into_inner();
        if r.network.is_empty() {
            return Err(invalid("network is empty"));
        }
        let valid: HashSet<String> = r.valid_handles.into_iter().collect();
        let gone = self
            .alloc
            .garbage_collect(&r.network, valid)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::GarbageCollectReply {
            released_handles: gone,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let s = self.alloc.status().await.map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::StatusReply {
            ready: s.ready,
            node: s.node,
            pools: s
                .pools
                .into_iter()
                .map(|p| proto::PoolStatus {
                    name: p.name,
                    cidr: p.cidr.to_string(),
                    capacity: p.capacity,
                    allocated: p.allocated,
                    disabled: p.disabled,
                })
                .collect(),
            message: s.message,
        }))
    }
}
