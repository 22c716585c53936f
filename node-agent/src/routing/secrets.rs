//! BGP passwords (RFC 2385 TCP MD5) from the Secrets `BGPPeer`s name.
//!
//! A Secret is read (one GET each) only when it can have changed for us:
//! the `BGPPeer`s changed (they name the Secrets), a password a peer needs
//! is missing (a Secret not created yet; retried with backoff), applying
//! the configuration to the speaker failed, or [`REFRESH`] passed (a
//! rotated password). Node, pool, IPAM and Service churn reads nothing:
//! none of it changes a password. The agent's RBAC grants `get` on the
//! named Secret only, so it cannot watch it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::time::Instant;

use crate::k8s::cluster::Cluster;

/// How often the passwords are read again when nothing else asked.
pub const REFRESH: Duration = Duration::from_secs(60);
/// First retry after a password was missing; doubles up to [`REFRESH`].
const MISSING_RETRY: Duration = Duration::from_secs(1);

/// Passwords by (Secret name, key).
pub type Passwords = BTreeMap<(String, String), String>;

/// The passwords as last read, and when to read them again.
#[derive(Debug)]
pub struct PasswordCache {
    namespace: String,
    passwords: Passwords,
    /// Read at the next [`PasswordCache::get`].
    stale: bool,
    /// When the passwords are read again anyway.
    next_read: Option<Instant>,
    /// Current retry delay while a password is missing.
    retry: Duration,
}

impl PasswordCache {
    /// Reads Secrets in `namespace`; the first [`PasswordCache::get`] reads.
    pub fn new(namespace: impl Into<String>) -> Self {
        PasswordCache {
            namespace: namespace.into(),
            passwords: Passwords::new(),
            stale: true,
            next_read: None,
            retry: MISSING_RETRY,
        }
    }

    /// The next [`PasswordCache::get`] reads the Secrets again.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// When the cache wants to be read again by itself (a refresh or a
    /// retry for a missing password).
    pub fn due(&self) -> Option<Instant> {
        self.next_read
    }

    /// The passwords, read now if they are stale or due.
    pub async fn get(&mut self, client: &kube::Client, cluster: &Cluster) -> &Passwords {
        let due = self.next_read.is_some_and(|t| t <= Instant::now());
        if std::mem::take(&mut self.stale) || due {
            let (passwords, missing) = read(client, &self.namespace, cluster).await;
            self.passwords = passwords;
            let wait = if missing {
                let w = self.retry;
                self.retry = (self.retry * 2).min(REFRESH);
                w
            } else {
                self.retry = MISSING_RETRY;
                REFRESH
            };
            self.next_read = Some(Instant::now() + wait);
        }
        &self.passwords
    }
}

/// Reads every password a BGPPeer names; true when one was missing.
async fn read(client: &kube::Client, ns: &str, cluster: &Cluster) -> (Passwords, bool) {
    let mut out = BTreeMap::new();
    let mut missing = false;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for p in cluster.bgp_peers.state() {
        let Some(sel) = &p.spec.password else {
            continue;
        };
        let key = (sel.name.clone(), sel.key.clone());
        if out.contains_key(&key) {
            continue;
        }
        match api.get_opt(&sel.name).await {
            Ok(Some(s)) => {
                let v = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&sel.key))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .or_else(|| {
                        s.string_data
                            .as_ref()
                            .and_then(|d| d.get(&sel.key).cloned())
                    });
                match v {
                    Some(v) => {
                        out.insert(key, v);
                    }
                    None => missing = true,
                }
            }
            Ok(None) => missing = true,
            Err(e) => {
                missing = true;
                tracing::warn!(secret = %sel.name, error = %e, "cannot read BGP password Secret")
            }
        }
    }
    (out, missing)
}
