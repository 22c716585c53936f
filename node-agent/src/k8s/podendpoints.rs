//! Publishes this node's pods as [`PodEndpoint`]s (docs/scale.md §4): the
//! compact objects other agents can watch instead of every Pod.
//!
//! ```text
//!  Pods on this node (own watch) ─────┐
//!  IPAM view (local allocations) ─────┼─► desired ─► diff against the
//!  resync timer (60 s) ───────────────┘              PodEndpoints with
//!                                                    spec.node=<me>
//!                                                    ─► create / replace / delete
//! ```
//!
//! A pod is published while it is on this node, not host-network, not
//! terminal (Succeeded/Failed) and has an address: from the IPAM view as
//! soon as the CNI ADD allocated it, or from `status.podIPs`. Writes are
//! made only when the desired set differs from what was last written, or
//! when this node's endpoints changed on the server (a watch with the node
//! field selector: an object someone edited or deleted is put back, a stray one
//! removed, at once), and on the periodic resync. Replaces carry the resourceVersion they read and deletes a
//! uid + resourceVersion precondition, so a write never clobbers a newer
//! object — such as the endpoint a pod's new node wrote after the pod
//! moved. An endpoint that another node wrote for a pod that is now ours is
//! taken over (read, then replaced with its resourceVersion).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;

use crate::k8s::crd::{NODE_FIELD, NamedPort, PodEndpoint, PodEndpointSpec};
use crate::k8s::ipam::view::IpamView;
use crate::status::health::Pulse;

/// How often the published objects are compared with the API server even
/// when nothing changed here.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Retry delay after a failed pass.
const RETRY: Duration = Duration::from_secs(1);

/// One endpoint as this node wants it: (namespace, name) → (pod uid, spec).
pub type Desired = BTreeMap<(String, String), (String, PodEndpointSpec)>;

/// The endpoints of `node`'s pods (see the module doc for which pods).
pub fn desired<'a>(
    node: &str,
    pods: impl IntoIterator<Item = &'a Pod>,
    view: &IpamView,
) -> Desired {
    let mut allocated: BTreeMap<(&str, &str), Vec<IpAddr>> = BTreeMap::new();
    for a in view.local.iter().filter(|a| !a.standalone()) {
        allocated
            .entry((a.namespace.as_str(), a.pod.as_str()))
            .or_default()
            .push(a.ip);
    }
    let mut out = Desired::new();
    for pod in pods {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.node_name.as_deref()) != Some(node)
            || spec.and_then(|s| s.host_network) == Some(true)
        {
            continue;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
            pod.metadata.uid.as_deref(),
        ) else {
            continue;
        };
        let mut addresses: Vec<IpAddr> = allocated.get(&(ns, name)).cloned().unwrap_or_default();
        for ip in status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
        {
            addresses.push(ip);
        }
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            continue;
        }
        let mut named_ports: Vec<NamedPort> = spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        named_ports.sort();
        named_ports.dedup();
        out.insert(
            (ns.to_string(), name.to_string()),
            (
                uid.to_string(),
                PodEndpointSpec {
                    node: node.to_string(),
                    addresses,
                    labels: pod.metadata.labels.clone().unwrap_or_default(),
                    named_ports,
                },
            ),
        );
    }
    out
}

/// The object for one desired endpoint.
fn object(ns: &str, name: &str, uid: &str, spec: &PodEndpointSpec) -> PodEndpoint {
    PodEndpoint {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: name.to_string(),
                uid: uid.to_string(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: spec.clone(),
    }
}

/// Whether `have` already is what `want` asks for.
fn same(have: &PodEndpoint, uid: &str, spec: &PodEndpointSpec) -> bool {
    // An endpoint written before 2026-12 also has the label
    // `margay.dev/node`; it is left as it is until the next replace.
    have.spec == *spec
        && have
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Pod" && o.uid == uid)
}

/// What one pass wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Objects created.
    pub created: usize,
    /// Objects replaced.
    pub replaced: usize,
    /// Objects deleted.
    pub deleted: usize,
}

/// Makes the API server's PodEndpoints of `node` equal to `want`.
pub async fn sync(client: &Client, node: &str, want: &Desired) -> Result<PassReport, kube::Error> {
    let all: Api<PodEndpoint> = Api::all(client.clone());
    let have = all
        .list(&ListParams::default().fields(&format!("{NODE_FIELD}={node}")))
        .await?;
    let mut report = PassReport::default();
    let mut seen = BTreeMap::new();
    for ep in &have.items {
        let key = (ep.namespace().unwrap_or_default(), ep.name_any());
        match want.get(&key) {
            Some((uid, spec)) if same(ep, uid, spec) => {}
            Some((uid, spec)) => {
                let api: Api<PodEndpoint> = Api::namespaced(client.clone(), &key.0);
                let mut obj = object(&key.0, &key.1, uid, spec);
                obj.metadata.resource_version = ep.resource_version();
                api.replace(&key.1, &PostParams::default(), &obj).await?;
                report.replaced += 1;
            }
            None => {
                let api: Api<PodEndpoint> = Api::namespaced(client.clone(), &key.0);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: ep.uid(),
                        resource_version: ep.resource_version(),
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&key.1, &dp).await {
                    Ok(_) => report.deleted += 1,
                    // Already gone, or changed since (another node's now).
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        seen.insert(key, ());
    }
    for ((ns, name), (uid, spec)) in want {
        if seen.contains_key(&(ns.clone(), name.clone())) {
            continue;
        }
        let api: Api<PodEndpoint> = Api::namespaced(client.clone(), ns);
        let obj = object(ns, name, uid, spec);
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => report.created += 1,
            // Written by the pod's previous node: take it over.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let cur = api.get(name).await?;
                let mut obj = obj;
                obj.metadata.resource_version = cur.resource_version();
                api.replace(name, &PostParams::default(), &obj).await?;
                report.replaced += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// The publishing loop: its own watch of this node's Pods (field selector
/// `spec.nodeName`, a few dozen objects: the cluster-wide Pod store is
/// never scanned), a pass when they, this node's allocations or its
/// endpoints on the server change, and every [`RESYNC`].
pub async fn run(
    client: Client,
    mut view: watch::Receiver<std::sync::Arc<IpamView>>,
    node: String,
    mut pulse: Pulse,
) {
    use futures::{FutureExt as _, StreamExt as _};
    use kube::runtime::watcher::{self, Event};
    use kube::runtime::{WatchStreamExt as _, reflector};
    let (pods, writer) = reflector::store::<Pod>();
    let mut local = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        )
        .modify(crate::k8s::pod::trim_pod),
    )
    .default_backoff()
    .boxed();
    // Our own objects: any change on the server triggers a comparison.
    let mut own = watcher::watcher(
        Api::<PodEndpoint>::all(client.clone()),
        watcher::Config::default().fields(&format!("{NODE_FIELD}={node}")),
    )
    .default_backoff()
    .boxed();
    let mut pods_synced = false;
    let mut written: Option<Desired> = None;
    let mut resync = tokio::time::interval(RESYNC);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut dirty = true;
    loop {
        // Before the first complete list, a missing pod may only be
        // unlisted yet: publish (and delete) nothing.
        let view_now = view.borrow_and_update().clone();
        if std::mem::take(&mut dirty) && pods_synced && view_now.synced {
            let state = pods.state();
            let want = desired(&node, state.iter().map(|p| &**p), &view_now);
            if written.as_ref() != Some(&want) {
                match sync(&client, &node, &want).await {
                    Ok(r) => {
                        if r != PassReport::default() {
                            tracing::debug!(
                                created = r.created,
                                replaced = r.replaced,
                                deleted = r.deleted,
                                "pod endpoints published"
                            );
                        }
                        written = Some(want);
                        retry_at = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::logging::chain(&e), "publishing pod endpoints failed; retrying");
                        retry_at = Some(tokio::time::Instant::now() + RETRY);
                    }
                }
            }
        }
        tokio::select! {
            ev = local.next() => {
                let Some(ev) = ev else { return };
                let mut burst = vec![ev];
                while let Some(Some(ev)) = local.next().now_or_never() {
                    burst.push(ev);
                }
                for ev in burst {
                    match ev {
                        Ok(Event::InitDone) => pods_synced = true,
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "watching this node's pods"),
                    }
                }
                dirty = true;
            }
            ev = own.next() => {
                let Some(ev) = ev else { return };
                if let Err(e) = ev {
                    tracing::debug!(error = %e, "watching this node's pod endpoints");
                }
                // One comparison for a burst (our own writes echo back).
                while let Some(Some(_)) = own.next().now_or_never() {}
                written = None;
                dirty = true;
            }
            r = view.changed() => {
                if r.is_err() { return }
                dirty = true;
            }
            _ = resync.tick() => {
                written = None;
                dirty = true;
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                dirty = true;
            }
            () = pulse.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests;
