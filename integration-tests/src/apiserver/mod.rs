//! Kubernetes API test server: a kube-apiserver stand-in for what Margay's
//! agent (kube 5 watchers, reflectors, CAS updates) and kubectl use.
//!
//! HTTPS ([`tls`]: its own CA, which every kubeconfig it writes carries),
//! bearer-token authentication and RBAC authorization ([`auth`]: the admin
//! token of [`kubeconfig`], ServiceAccount tokens from the TokenRequest API,
//! RBAC from the stored roles and bindings). Objects are JSON,
//! validated only for apiVersion/kind/metadata (names, labels) like the
//! generic registry does; semantics follow the real server: one global
//! resourceVersion, 409 on stale updates, watches resuming from a history
//! window with 410 beyond it, selectors on list and watch, consistent
//! paginated lists, CRDs that serve their resources.
//!
//! ```text
//!  client ──HTTP──► accept loop ──► connection task ──► http::handle
//!                                                         │ Command (mpsc) + oneshot reply
//!                                                         ▼
//!                                          actor task: owns Store (sans-IO)
//!                                           │ broadcast<Arc<Event>> (bounded)   │ watch<Snapshot> (debounced)
//!                                           ▼                                   ▼
//!                            watch producer per stream ──► body        persister task ──► state file
//! ```
//!
//! Start it in-process with [`ApiServer::start`] (tests: `Config::default()`
//! listens on 127.0.0.1 with a free port; [`ApiServer::addr`],
//! [`ApiServer::kubeconfig`], [`ApiServer::compact`] to force 410s,
//! [`ApiServer::shutdown`]), or as a process with the `margay-apiserver`
//! binary (`--listen`, `--state`, `--addr-file`, `--kubeconfig`,
//! `--latency-ms`, `--watch-delay-ms`, `--history`, `--watch-buffer`, `--bookmark-interval-ms`;
//! `POST /margay/compact` is the same test hook over HTTP;
//! `GET /margay/traffic` reports the response bytes sent per user, resource
//! and verb, see [`traffic`]).
//!
//! Served: core v1 namespaces, nodes, pods, services, endpoints, secrets,
//! configmaps, serviceaccounts, events; events.k8s.io/v1 events;
//! networking.k8s.io/v1 networkpolicies; discovery.k8s.io/v1 endpointslices;
//! apps/v1 daemonsets; rbac.authorization.k8s.io/v1 (cluster)roles and
//! (cluster)rolebindings; coordination.k8s.io/v1 leases;
//! apiextensions.k8s.io/v1 customresourcedefinitions and what they define.
//! `/status` subresources where the real server has them (writes to the
//! main resource keep the stored status; `/status` writes change only status).
//!
//! Approximations (documented for test authors):
//! - Strategic merge patch without Go types: see [`patch`].
//! - Deletion is immediate unless `metadata.finalizers` is non-empty (then
//!   `deletionTimestamp` is set and the object goes when the last finalizer
//!   is removed). Pods are not graceful (no kubelet), namespaces and CRDs
//!   delete their contents at once (no Terminating phase), there is no
//!   garbage collector for ownerReferences.
//! - Custom resources are pruned, defaulted and validated against their
//!   CRD's structural schema, CEL rules included ([`schema`]; unknown fields
//!   are refused with `fieldValidation=Strict`). Built-in kinds are not
//!   schema-validated (beyond a few defaults: namespace label/phase/finalizer,
//!   pod phase Pending, service type and cluster IPs, CRD names and status
//!   conditions): k8s-openapi types check Margay's manifests instead. A CRD whose plural is
//!   taken is rejected (422) instead of being accepted with
//!   NamesAccepted=False. Watches on a deleted CRD's resource are not closed.
//! - Server-side apply answers 415. `managedFields` are recorded for
//!   Update operations ([`managed`]) as the real server does.
//! - Lists with `resourceVersion=N` (not 0) are served at the current
//!   revision if it is ≥ N (504 if N is in the future); `Exact` and
//!   `continue` read the snapshot at that revision from the history window.
//! - Responses are JSON only (protobuf is decoded for the request bodies of
//!   kubectl's typed `create` commands, see [`proto`]); aggregated discovery
//!   (`apidiscovery.k8s.io/v2`) is served from the same tables;
//!   `/openapi/v2` is a stub without schemas ([`openapi`]), `/openapi/v3`
//!   is 404: kubectl works, but cannot validate fields or `explain`.
//! - The history window is a count of changes (`--history`), not time; a
//!   restart from the state file starts with an empty history (older
//!   revisions then get 410, as after an etcd compaction).

pub mod actor;
pub mod auth;
pub mod bench;
pub mod crd;
pub mod discovery;
pub mod error;
pub mod http;
pub mod managed;
pub mod meta;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod persist;
pub mod proto;
pub mod resources;
pub mod schema;
pub mod select;
pub mod store;
pub mod table;
pub mod tls;
pub mod traffic;
pub mod watch;
pub mod write;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument as _, debug, info, warn};

pub use error::{ApiError, ServerError};

use actor::Command;
use store::Store;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0 = any free port).
    pub listen: SocketAddr,
    /// Persist objects to this file (and reload them at start).
    pub state_file: Option<PathBuf>,
    /// Artificial latency added to every request.
    pub latency: Duration,
    /// Artificial delay between a change and its delivery to each watcher.
    pub watch_delay: Duration,
    /// Changes kept for watch resumption and consistent pagination.
    pub history_limit: usize,
    /// Events a watcher may fall behind before it is closed.
    pub watch_buffer: usize,
    /// BOOKMARK period for watches that allow them.
    pub bookmark_interval: Duration,
    /// Delay between a change and the state file write (changes coalesce).
    pub persist_debounce: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Watch timeout when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_file: None,
            latency: Duration::ZERO,
            watch_delay: Duration::ZERO,
            history_limit: 10_000,
            watch_buffer: 4096,
            bookmark_interval: Duration::from_secs(5),
            persist_debounce: Duration::from_millis(50),
            max_body_bytes: 8 << 20,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// A running server; stop it with [`ApiServer::shutdown`] (dropping it aborts it).
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    tls: Arc<tls::Tls>,
    cmd: mpsc::Sender<Command>,
    stop: Option<oneshot::Sender<()>>,
    accept: Option<JoinHandle<()>>,
    actor: Option<JoinHandle<()>>,
    persister: Option<JoinHandle<Result<(), ServerError>>>,
    traffic: Arc<traffic::Traffic>,
}

impl ApiServer {
    /// Loads the state file (if any), binds, and starts serving.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let (store, fresh) = match &config.state_file {
            Some(path) => match persist::load(path)? {
                Some(snap) => {
                    let n = snap.objects.len();
                    let s = Store::from_snapshot(config.history_limit, snap).map_err(|why| {
                        ServerError::CorruptState {
                            path: path.clone(),
                            why,
                        }
                    })?;
                    info!(path = %path.display(), objects = n, rv = s.current_rv(), "state loaded");
                    (s, false)
                }
                None => (Store::new(config.history_limit), true),
            },
            None => (Store::new(config.history_limit), false),
        };
        if let (Some(path), true) = (&config.state_file, fresh) {
            persist::save(path, &store.snapshot())?;
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let tls = Arc::new(tls::Tls::load_or_generate(
            config
                .state_file
                .as_ref()
                .map(|p| p.with_extension("tls.json"))
                .as_deref(),
            &tls::sans_for(addr.ip()),
        )?);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
        let (events, _) = broadcast::channel(config.watch_buffer.max(16));
        let (cmd, cmd_rx) = mpsc::channel(1024);
        let (persist_tx, persister) = match &config.state_file {
            Some(path) => {
                let (tx, rx) = tokio::sync::watch::channel(None);
                (Some(tx), Some(tokio::spawn(persist::run(path.clone(), rx))))
            }
            None => (None, None),
        };
        let key_file = config
            .state_file
            .as_ref()
            .map(|p| p.with_extension("token-key"));
        let key =
            auth::Auth::load_key(key_file.as_deref()).map_err(|source| ServerError::ReadState {
                path: key_file.clone().unwrap_or_default(),
                source,
            })?;
        let actor = tokio::spawn(actor::run(
            store,
            cmd_rx,
            events,
            persist_tx,
            config.persist_debounce,
            addr.to_string(),
            auth::Auth::new(ADMIN_TOKEN, key),
        ));
        let traffic = Arc::new(traffic::Traffic::default());
        let shared = Arc::new(http::Shared {
            cmd: cmd.clone(),
            latency: config.latency,
            bookmark_every: config.bookmark_interval,
            watch_delay: config.watch_delay,
            max_body: config.max_body_bytes,
            default_watch_timeout: config.default_watch_timeout,
            traffic: traffic.clone(),
        });
        let (stop, stop_rx) = oneshot::channel();
        let accept = tokio::spawn(
            accept_loop(listener, acceptor, shared, stop_rx)
                .instrument(tracing::info_span!("apiserver", %addr)),
        );
        info!(%addr, "Kubernetes API test server listening");
        Ok(ApiServer {
            addr,
            tls,
            cmd,
            stop: Some(stop),
            accept: Some(accept),
            actor: Some(actor),
            persister,
            traffic,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://addr`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server's certificates (clients trust `ca_pem`).
    pub fn tls(&self) -> &tls::Tls {
        &self.tls
    }

    /// A kubeconfig for kubectl pointing at this server, as the admin.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url(), &self.tls.ca_data(), ADMIN_TOKEN)
    }

    /// A kube client configuration presenting `token`, trusting the CA.
    pub fn client_config(&self, token: &str) -> kube::Config {
        let mut cfg = kube::Config::new(self.url().parse().unwrap_or_default());
        cfg.root_cert = Some(vec![self.tls.ca_der.clone()]);
        cfg.auth_info.token = Some(token.to_string().into());
        cfg
    }

    /// [`ApiServer::client_config`] as the admin.
    pub fn admin_config(&self) -> kube::Config {
        self.client_config(ADMIN_TOKEN)
    }

    /// A token for ServiceAccount `namespace/name` (which must exist), as
    /// the TokenRequest API mints it for the admin.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<String, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::TokenRequest {
                token: Some(ADMIN_TOKEN.into()),
                namespace: namespace.into(),
                name: name.into(),
                body: serde_json::json!({"spec": {"expirationSeconds": 86_400}}),
                reply: tx,
            })
            .await
            .map_err(|_| ApiError::unavailable())?;
        let out = rx.await.map_err(|_| ApiError::unavailable())??;
        Ok(out
            .pointer("/status/token")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Response bytes sent so far per user, resource and verb (the
    /// `GET /margay/traffic` document, see [`traffic`]).
    pub fn traffic(&self) -> serde_json::Value {
        self.traffic.report()
    }

    /// Test hook: forget all history, so watches and `continue` tokens from
    /// older revisions get 410 Gone. Returns the current revision.
    pub async fn compact(&self) -> Result<u64, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Compact(tx))
            .await
            .map_err(|_| ServerError::StoreGone)?;
        rx.await.map_err(|_| ServerError::StoreGone)
    }

    /// Stops accepting, closes every connection and watch, writes the state
    /// file one last time and waits for all of it.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(a) = self.accept.take() {
            let _ = a.await;
        }
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(a) = self.actor.take() {
            let _ = a.await;
        }
        match self.persister.take() {
            Some(p) => p.await.unwrap_or(Err(ServerError::StoreGone)),
            None => Ok(()),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in [self.accept.take(), self.actor.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        if let Some(p) = self.persister.take() {
            p.abort();
        }
    }
}

/// A kube client configuration for the server at `url` as the admin,
/// without checking its certificate: for a test harness that did not
/// start the server itself (the lab's runs as its own process). Products
/// (the agent, margayctl) and kubectl verify it through their kubeconfig.
pub fn insecure_admin_config(url: ::http::Uri) -> kube::Config {
    let mut cfg = kube::Config::new(url);
    cfg.accept_invalid_certs = true;
    cfg.auth_info.token = Some(ADMIN_TOKEN.to_string().into());
    cfg
}

/// The admin's bearer token (user `kubernetes-admin`, group
/// `system:masters`), in every [`kubeconfig`].
pub const ADMIN_TOKEN: &str = "margay-test-token";

/// A kubeconfig (YAML) with one context: `server`, trusting the CA whose
/// PEM is base64 `ca_data`, presenting `token`.
pub fn kubeconfig(server: &str, ca_data: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: margay\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_data}\nusers:\n- name: margay\n  user:\n    token: {token}\ncontexts:\n- name: margay\n  context:\n    cluster: margay\n    user: margay\n    namespace: default\ncurrent-context: margay\n"
    )
}

/// The server URL and CA data of a kubeconfig this server wrote.
pub fn kubeconfig_cluster(yaml: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_yaml_ng::from_str(yaml).ok()?;
    let c = v.pointer("/clusters/0/cluster")?;
    Some((
        c.get("server")?.as_str()?.to_string(),
        c.get("certificate-authority-data")?.as_str()?.to_string(),
    ))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<http::Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    // Connection tasks live in the set: dropping it (on stop) aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let sh = shared.clone();
                    let acceptor = acceptor.clone();
                    conns.spawn(async move {
                        let stream = match acceptor.accept(stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                        };
                        let svc = hyper::service::service_fn(move |req| http::handle(req, sh.clone()));
                        let builder = auto::Builder::new(TokioExecutor::new());
                        if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                            debug!(%peer, error = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    conns.shutdown().await;
}
