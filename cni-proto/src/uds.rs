//! The unix socket between the CNI plugin and the agent: the server side
//! ([`UdsListener`], [`serve`]) and the clients ([`connect_uds`],
//! [`connect_endpoints_uds`]).

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tracing::info;

use crate::proto::endpoints_client::EndpointsClient;
use crate::proto::ipam_client::IpamClient;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/margay/margay.sock";

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
