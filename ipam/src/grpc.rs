//! The `margay.v1.Ipam` gRPC service over an [`Allocator`], the unix-socket
//! server, and client helpers for the CNI plugin.
//!
//! Serving both services on one socket (in the agent):
//! ```ignore
//! let routes = ipam::grpc::ipam_routes(allocator)
//!     .add_service(EndpointsServer::new(my_endpoints));
//! ipam::grpc::serve(Path::new(DEFAULT_SOCKET), routes, shutdown).await?;
//! ```
//! Error mapping (the proto header): RESOURCE_EXHAUSTED pool exhausted,
//! FAILED_PRECONDITION no pool matches, ALREADY_EXISTS requested address in
//! use, UNAVAILABLE datastore down / agent stopping, ABORTED CAS retries
//! exhausted, INVALID_ARGUMENT malformed request.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status};
use tracing::{info, info_span, warn};

use crate::alloc::{AllocRequest, Allocator, Assigned};
use crate::cidr::Family;
use crate::error::IpamError;
use crate::model::AllocationAttrs;
use crate::proto;
use crate::proto::endpoints_client::EndpointsClient;
use crate::proto::ipam_client::IpamClient;
use crate::proto::ipam_server::{Ipam, IpamServer};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/margay/margay.sock";

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

fn to_proto(a: &Assigned) -> proto::AllocatedAddress {
    proto::AllocatedAddress {
        ip: a.ip.to_string(),
        block: a.block.to_string(),
        pool: a.pool.clone(),
        borrowed: a.borrowed,
    }
}

fn parse_request(node: &str, r: proto::AllocateRequest) -> Result<AllocRequest, Status> {
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

/// Socket setup and serving errors.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Filesystem work on the socket path failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process answers on the socket.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The gRPC server failed.
    #[error("gRPC server on {path}")]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A bound unix socket (mode 0600). The file is removed when this is
/// dropped or when [`UdsListener::serve`] returns.
pub struct UdsListener {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl UdsListener {
    /// Creates the parent directory, removes a stale socket (refusing if a
    /// server still answers on it, or if the path is not a socket), binds
    /// under a temporary name, sets mode 0600 and renames into place, so the
    /// socket is never reachable with a wider mode.
    pub async fn bind(path: &Path) -> Result<UdsListener, ServeError> {
        let io_err = |what, source| ServeError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err("creating the directory of", e))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(ServeError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(|e| io_err("removing stale socket", e))?;
            }
            Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", e)),
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "margay.sock".into());
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(|e| io_err("binding", e))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("setting mode 0600 and renaming to", e));
        }
        Ok(UdsListener {
            listener: Some(listener),
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `routes` until `shutdown` completes, then removes the socket.
    pub async fn serve(
        mut self,
        routes: Routes,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        info!(path = %self.path.display(), "serving gRPC");
        let res = Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        // Drop removes the socket file.
        res.map_err(|source| ServeError::Transport {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for UdsListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` and serves `routes` until `shutdown`; see [`UdsListener`].
pub async fn serve(
    path: &Path,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    UdsListener::bind(path).await?.serve(routes, shutdown).await
}

/// A gRPC channel over a unix socket. Connects eagerly (one `connect(2)`),
/// so a missing agent shows up here as an error the caller maps to
/// "try again later".
pub async fn connect_uds_channel(
    path: impl AsRef<Path>,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.as_ref().to_path_buf();
    // The URI is required by the API but unused: the connector ignores it.
    Endpoint::from_static("http://margay.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// An `Ipam` client over a unix socket.
pub async fn connect_uds(
    path: impl AsRef<Path>,
) -> Result<IpamClient<Channel>, tonic::transport::Error> {
    Ok(IpamClient::new(connect_uds_channel(path).await?))
}

/// An `Endpoints` client over a unix socket.
pub async fn connect_endpoints_uds(
    path: impl AsRef<Path>,
) -> Result<EndpointsClient<Channel>, tonic::transport::Error> {
    Ok(EndpointsClient::new(connect_uds_channel(path).await?))
}
