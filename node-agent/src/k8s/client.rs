//! The Kubernetes client: from a kubeconfig, a URL, or the in-cluster
//! ServiceAccount.

use kube::Client;

/// The API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--api-server` is not a URL.
    #[error("--api-server {url:?} is not a URL: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// kube could not configure a client.
    #[error("cannot configure the Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
}

/// Where the agent (or margayctl) finds the API server and its credentials.
#[derive(Debug, Clone, Default)]
pub struct ApiAccess {
    /// A kubeconfig file: the server and the credentials (the identity).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The server URL; with a kubeconfig it overrides the kubeconfig's
    /// server (as kubectl's `--server`), without one it is used with no
    /// credentials.
    pub api_server: Option<String>,
}

/// Builds a client from `access`; with neither a kubeconfig nor a URL, from
/// the in-cluster config (the DaemonSet's ServiceAccount) or `$KUBECONFIG`.
pub async fn client(access: &ApiAccess) -> Result<Client, ClientError> {
    let url = |u: &str| {
        u.parse::<http::Uri>().map_err(|e| ClientError::BadUrl {
            url: u.to_string(),
            reason: e.to_string(),
        })
    };
    let mut cfg = match (&access.kubeconfig, &access.api_server) {
        (Some(path), server) => {
            let kc_err = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kc_err)?;
            let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(kc_err)?;
            if let Some(u) = server {
                cfg.cluster_url = url(u)?;
            }
            cfg
        }
        (None, Some(u)) => kube::Config::new(url(u)?),
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| ClientError::Kube(kube::Error::InferConfig(e)))?,
    };
    // The API server names the writer of every field after this
    // (`managedFields[].manager`), and audit logs show it.
    if let Ok(v) = http::HeaderValue::from_str(&user_agent()) {
        cfg.headers.push((http::header::USER_AGENT, v));
    }
    Ok(Client::try_from(cfg)?)
}

/// `<program>/<version>`: the program's file name (`margay-node`,
/// `margayctl`), so that each is its own field manager.
fn user_agent() -> String {
    let program = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .filter(|p| !p.is_empty() && p.is_ascii())
        .unwrap_or_else(|| "margay".into());
    format!("{program}/{}", env!("CARGO_PKG_VERSION"))
}
