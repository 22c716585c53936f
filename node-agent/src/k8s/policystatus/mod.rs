//! AdminNetworkPolicy / BaselineAdminNetworkPolicy status: one agent in the
//! cluster (the holder of the Lease `margay-policy-status` in the agent's
//! namespace) writes each object's `Accepted` condition through the status
//! subresource; the others only watch the Lease.
//!
//! ```text
//!  watch Lease (one name) ─► store ─┐
//!                 every duration/3 ─┴─► lease::Elector ─► create / replace (CAS) ─► leader?
//!  Cluster (ANP/BANP stores) ─ generation change ─► conditions::Planner (leader only)
//!        ─► PUT <object>/status (resourceVersion-guarded), only what differs
//! ```
//!
//! Losing the lease (a conflict, an error, someone else's unexpired
//! record) stops the writes at once. What an object's condition says is
//! [`conditions::derive`]; a write happens only when the object says
//! something else ([`conditions::next_status`]), so reconciles do not
//! write and agents do not fight (there is one writer).

pub mod conditions;
pub mod lease;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use policy::compile::admin::AdminKind;
use serde_json::Value;

use crate::k8s::cluster::Cluster;
use crate::k8s::crd::{RawAdminNetworkPolicy, RawBaselineAdminNetworkPolicy};
use conditions::{Planner, StatusWrite};
use lease::{Elector, Step};

/// The Lease that elects the status writer.
pub const LEASE_NAME: &str = "margay-policy-status";

/// Where the Lease lives, who this agent is, and how long a lease lasts.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// The agent's namespace (the DaemonSet's).
    pub namespace: String,
    /// This node's name (the Lease's `holderIdentity`).
    pub node: String,
    /// `leaseDurationSeconds`; the holder renews every third of it.
    pub lease_duration: Duration,
}

/// Runs until the agent stops.
pub async fn run(cluster: Cluster, cfg: StatusConfig) {
    let client = cluster.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let (store, writer) = reflector::store();
    let watch = watcher(
        leases.clone(),
        watcher::Config::default().fields(&format!("metadata.name={LEASE_NAME}")),
    )
    .default_backoff()
    .reflect(writer)
    .for_each(|ev| async move {
        if let Err(e) = ev {
            tracing::debug!(error = %e, "policy status lease watch");
        }
    });
    let watch = tokio::spawn(watch);
    let _abort = AbortOnDrop(watch);
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let key = ObjectRef::<Lease>::new(LEASE_NAME).within(&cfg.namespace);
    let mut elector = Elector::new(&cfg.namespace, LEASE_NAME, &cfg.node, cfg.lease_duration);
    let retry = (cfg.lease_duration / 3).max(Duration::from_millis(200));
    let mut gens = cluster.subscribe();
    let mut planner = Planner::default();
    let mut leader = false;
    // Our last successful lease write: (resourceVersion it replaced, reply),
    // used until the watch shows it.
    let mut ours: Option<(Option<String>, Lease)> = None;
    let mut next_elect = Instant::now();
    loop {
        if Instant::now() >= next_elect {
            let cached = store.get(&key);
            let seen_rv = cached
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            let current = match (&ours, cached) {
                (Some((before, written)), _) if *before == seen_rv => {
                    Some(Arc::new(written.clone()))
                }
                (_, c) => c,
            };
            let step = elector.step(current.as_deref(), Instant::now(), Timestamp::now());
            let (won, reply) = match step {
                Step::Create(l) => written(leases.create(&PostParams::default(), &l).await),
                Step::Update(l) => {
                    written(leases.replace(LEASE_NAME, &PostParams::default(), &l).await)
                }
                Step::Follow { .. } => (false, None),
            };
            ours = reply.map(|r| (seen_rv, r));
            if won != leader {
                tracing::info!(node = %cfg.node, leader = won, lease = LEASE_NAME, "policy status writer");
                planner.reset();
            }
            leader = won;
            next_elect = Instant::now() + retry;
        }
        if leader {
            write_all(&cluster, &mut planner).await;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_elect.into()) => {}
            changed = gens.changed(), if leader => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn written(r: Result<Lease, kube::Error>) -> (bool, Option<Lease>) {
    match r {
        Ok(l) => (true, Some(l)),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::debug!(reason = %s.message, "policy status lease taken by another agent");
            (false, None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "policy status lease not written");
            (false, None)
        }
    }
}

/// One reconcile: every object whose condition is not what it should be.
async fn write_all(cluster: &Cluster, planner: &mut Planner) {
    let admin = cluster.admin_policies.state();
    let baseline = cluster.baseline_policies.state();
    let values: Vec<(AdminKind, Value)> = admin
        .iter()
        .map(|o| (AdminKind::Admin, o.to_value()))
        .chain(baseline.iter().map(|o| (AdminKind::Baseline, o.to_value())))
        .collect();
    let now = Timestamp::now().to_string();
    let writes = planner.plan(values.iter().map(|(k, v)| (*k, v)), &now);
    for w in writes {
        let client = cluster.client();
        let result = match w.kind {
            AdminKind::Admin => {
                replace_status(client, &admin, &w, |o: &mut RawAdminNetworkPolicy| {
                    (&mut o.metadata, &mut o.rest)
                })
                .await
            }
            AdminKind::Baseline => {
                replace_status(
                    client,
                    &baseline,
                    &w,
                    |o: &mut RawBaselineAdminNetworkPolicy| (&mut o.metadata, &mut o.rest),
                )
                .await
            }
        };
        let Some(result) = result else { continue };
        match result {
            Ok(()) => tracing::info!(
                kind = %w.kind, name = %w.name, accepted = w.desired.accepted,
                reason = w.desired.reason, message = %w.desired.message,
                "policy status written"
            ),
            Err(e) => {
                tracing::debug!(kind = %w.kind, name = %w.name, error = %e, "policy status not written; deciding again");
                planner.failed(&w);
            }
        }
    }
}

type Parts<'a> = (
    &'a mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    &'a mut serde_json::Map<String, Value>,
);

/// Writes the planned status of the cached object `w` names through the
/// status subresource; `None` when the cache no longer has it.
async fn replace_status<T>(
    client: kube::Client,
    cached: &[Arc<T>],
    w: &StatusWrite,
    parts: impl FnOnce(&mut T) -> Parts<'_>,
) -> Option<Result<(), kube::Error>>
where
    T: k8s_openapi::Resource
        + kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let o = cached
        .iter()
        .find(|o| kube::Resource::meta(o.as_ref()).name.as_deref() == Some(&w.name))?;
    let body = with_status(o.as_ref().clone(), w, parts);
    let api: Api<T> = Api::all(client);
    Some(
        api.replace_status(&w.name, &PostParams::default(), &body)
            .await
            .map(|_| ()),
    )
}

/// The cached object with the planned status, guarded by the
/// resourceVersion the plan was made on.
fn with_status<T: k8s_openapi::Resource>(
    mut o: T,
    w: &StatusWrite,
    parts: impl FnOnce(&mut T) -> Parts<'_>,
) -> T {
    let (meta, rest) = parts(&mut o);
    meta.resource_version = Some(w.resource_version.clone());
    rest.insert("apiVersion".into(), Value::from(T::API_VERSION));
    rest.insert("kind".into(), Value::from(T::KIND));
    rest.insert("status".into(), w.status.clone());
    o
}
