//! gRPC client for the local `margay-node` agent over its unix socket.
//!
//! The status → CNI error mapping of `cni-proto/proto/margay.proto` lives in
//! [`status_error`] and nowhere else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_proto::proto::endpoints_client::EndpointsClient;
use cni_proto::proto::ipam_client::IpamClient;
use cni_proto::proto::{
    AllocateReply, AllocateRequest, EndpointDownRequest, EndpointUpRequest, GarbageCollectReply,
    GarbageCollectRequest, GetHandleReply, GetHandleRequest, ReleaseReply, ReleaseRequest,
    StatusReply, StatusRequest,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::error::CniError;

/// A connection to the agent carrying both services.
#[derive(Clone)]
pub struct Agent {
    ipam: IpamClient<Channel>,
    endpoints: EndpointsClient<Channel>,
    socket: PathBuf,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("socket", &self.socket)
            .finish()
    }
}

/// Connects to the agent's unix socket. An absent socket, a refused
/// connection or a timeout is [`CniError::TryAgain`] (code 11).
pub async fn connect(
    socket: &Path,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Agent, CniError> {
    let path = socket.to_path_buf();
    // The URI is required by the API but never resolved: the connector
    // below always dials the unix socket.
    let endpoint = Endpoint::from_static("http://margay.invalid")
        .connect_timeout(connect_timeout)
        .timeout(request_timeout);
    let dial = path.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        async move { UnixStream::connect(dial).await.map(TokioIo::new) }
    });
    let channel = tokio::time::timeout(connect_timeout, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| CniError::TryAgain {
            op: "connect",
            msg: format!("no answer on {} within {connect_timeout:?}", path.display()),
        })?
        .map_err(|e| CniError::TryAgain {
            op: "connect",
            msg: format!("{}: {}", path.display(), error_chain(&e)),
        })?;
    Ok(Agent {
        ipam: IpamClient::new(channel.clone()),
        endpoints: EndpointsClient::new(channel),
        socket: path,
    })
}

impl Agent {
    /// `Ipam.Allocate`.
    pub async fn allocate(&self, req: AllocateRequest) -> Result<AllocateReply, CniError> {
        self.ipam
            .clone()
            .allocate(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("Allocate", s))
    }

    /// `Ipam.Release`.
    pub async fn release(&self, handle: &str) -> Result<ReleaseReply, CniError> {
        self.ipam
            .clone()
            .release(ReleaseRequest {
                handle: handle.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("Release", s))
    }

    /// `Ipam.GetHandle`.
    pub async fn get_handle(&self, handle: &str) -> Result<GetHandleReply, CniError> {
        self.ipam
            .clone()
            .get_handle(GetHandleRequest {
                handle: handle.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("GetHandle", s))
    }

    /// `Ipam.GarbageCollect`.
    pub async fn garbage_collect(
        &self,
        req: GarbageCollectRequest,
    ) -> Result<GarbageCollectReply, CniError> {
        self.ipam
            .clone()
            .garbage_collect(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("GarbageCollect", s))
    }

    /// `Ipam.Status`.
    pub async fn status(&self) -> Result<StatusReply, CniError> {
        self.ipam
            .clone()
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("Status", s))
    }

    /// `Endpoints.EndpointUp`: returns when the host route and policy are in place.
    pub async fn endpoint_up(&self, req: EndpointUpRequest) -> Result<(), CniError> {
        self.endpoints
            .clone()
            .endpoint_up(req)
            .await
            .map(|_| ())
            .map_err(|s| status_error("EndpointUp", s))
    }

    /// `Endpoints.EndpointDown` (idempotent).
    pub async fn endpoint_down(&self, req: EndpointDownRequest) -> Result<(), CniError> {
        self.endpoints
            .clone()
            .endpoint_down(req)
            .await
            .map(|_| ())
            .map_err(|s| status_error("EndpointDown", s))
    }
}

/// The one mapping from a gRPC status to a CNI error (see the header of
/// `margay.proto`).
pub fn status_error(op: &'static str, s: Status) -> CniError {
    let msg = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
            CniError::TryAgain { op, msg }
        }
        Code::ResourceExhausted => CniError::PoolExhausted { msg },
        Code::FailedPrecondition => CniError::NoPoolMatches { msg },
        Code::AlreadyExists => CniError::AddressInUse { msg },
        Code::InvalidArgument => CniError::InvalidConfig(format!("agent rejected {op}: {msg}")),
        code => CniError::Agent { op, code, msg },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_follows_the_proto() {
        let cases = [
            (Code::Unavailable, 11),
            (Code::DeadlineExceeded, 11),
            (Code::Aborted, 11),
            (Code::ResourceExhausted, 100),
            (Code::FailedPrecondition, 101),
            (Code::AlreadyExists, 102),
            (Code::InvalidArgument, 7),
            (Code::Internal, 999),
            (Code::Unknown, 999),
        ];
        for (c, want) in cases {
            assert_eq!(
                status_error("Allocate", Status::new(c, "m")).code(),
                want,
                "{c:?}"
            );
        }
    }

    #[test]
    fn unreachable_socket_is_try_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("absent.sock");
        let err = rt
            .block_on(connect(
                &sock,
                Duration::from_millis(500),
                Duration::from_secs(1),
            ))
            .unwrap_err();
        assert_eq!(err.code(), 11);
        assert!(err.details().contains("absent.sock"), "{}", err.details());
    }
}
