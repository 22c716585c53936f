//! The IPAM [`Store`] on Kubernetes: `IPPool` and `IPAMBlock` custom
//! resources, every write a resourceVersion compare-and-swap.
//!
//! | Store call     | API request                                   | 409 / 404 become        |
//! |----------------|-----------------------------------------------|-------------------------|
//! | `create_block` | POST ipamblocks                               | AlreadyExists           |
//! | `update_block` | PUT ipamblocks/NAME with metadata.resourceVersion | Conflict / NotFound |
//! | `delete_block` | DELETE with preconditions.resourceVersion     | Conflict / NotFound     |
//! | `get_block`    | GET (never a cache: called after conflicts)   | `None` on 404           |
//! | `watch_blocks` | list + watch (kube watcher, relists on 410)   |                         |
//!
//! Connection failures, timeouts, 429 and 5xx are `Unavailable`, which the
//! CNI reports as "try again later" (code 11). Every write is counted in
//! `margay_ipam_api_writes_total`.

use std::sync::Arc;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use ipam::store::Kind;
use margay_types::Selector;

use ipam::{BlockEvent, BlockObject, IpamBlockSpec, PoolObject, PoolParams, Store, StoreError};

use crate::k8s::crd::{IPAMBlock, IPAMBlockSpec, IPPool};
use crate::status::metrics::{ApiLabels, Metrics};

/// IPAM objects as custom resources.
#[derive(Clone)]
pub struct KubeStore {
    pools: Api<IPPool>,
    blocks: Api<IPAMBlock>,
    metrics: Arc<Metrics>,
}

impl KubeStore {
    /// A store on `client`'s cluster.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        KubeStore {
            pools: Api::all(client.clone()),
            blocks: Api::all(client),
            metrics,
        }
    }

    fn error(&self, kind: Kind, name: &str, verb: &str, e: kube::Error) -> StoreError {
        let mapped = map_error(kind, name, e);
        if matches!(
            mapped,
            StoreError::Unavailable { .. } | StoreError::Invalid { .. }
        ) {
            self.metrics
                .api_errors
                .get_or_create(&ApiLabels {
                    resource: match kind {
                        Kind::Pool => "ippools",
                        Kind::Block => "ipamblocks",
                    }
                    .into(),
                    verb: verb.into(),
                })
                .inc();
        }
        mapped
    }
}

/// Maps a kube error to what the allocator distinguishes.
pub fn map_error(kind: Kind, name: &str, e: kube::Error) -> StoreError {
    let name = name.to_string();
    match e {
        kube::Error::Api(status) => match (status.code, status.reason.as_str()) {
            (409, "AlreadyExists") => StoreError::AlreadyExists { kind, name },
            (409, _) => StoreError::Conflict { kind, name },
            (404, _) => StoreError::NotFound { kind, name },
            (400 | 422, _) => StoreError::Invalid {
                kind,
                name,
                reason: status.message.clone(),
            },
            (code, reason) => StoreError::Unavailable {
                reason: format!("API answered {code} {reason}: {}", status.message),
                source: Some(Box::new(kube::Error::Api(status))),
            },
        },
        other => StoreError::Unavailable {
            reason: format!("API request failed: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

/// An `IPPool` custom resource (the one IPPool spec type) as the IPAM
/// allocator takes it: parsed, its selector compiled, its defaults applied
/// (one reading of each: [`crate::k8s::crd::IPPoolSpec`]'s `effective_*`).
pub fn pool_to_model(pool: &IPPool) -> Result<PoolObject, StoreError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let invalid = |reason: String| StoreError::Invalid {
        kind: Kind::Pool,
        name: name.clone(),
        reason,
    };
    let cidr = pool
        .spec
        .cidr
        .0
        .parse()
        .map_err(|e| invalid(format!("cidr {:?}: {e}", pool.spec.cidr.0)))?;
    let mut spec = PoolParams::new(cidr);
    spec.block_size = pool.spec.block_size;
    spec.disabled = pool.spec.disabled;
    spec.allowed_uses = pool.spec.effective_allowed_uses().to_vec();
    spec.node_selector = Selector::compile_opt(pool.spec.node_selector.as_ref())
        .map_err(|e| invalid(format!("nodeSelector: {e}")))?;
    Ok(PoolObject {
        resource_version: pool.metadata.resource_version.clone().unwrap_or_default(),
        name,
        spec,
    })
}

fn block_object(b: IPAMBlock) -> BlockObject {
    BlockObject {
        name: b.metadata.name.unwrap_or_default(),
        resource_version: b.metadata.resource_version.unwrap_or_default(),
        spec: b.spec.0,
    }
}

fn block_resource(name: &str, resource_version: Option<String>, spec: &IpamBlockSpec) -> IPAMBlock {
    IPAMBlock {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: IPAMBlockSpec(spec.clone()),
    }
}

impl Store for KubeStore {
    fn list_pools(&self) -> BoxFuture<'_, Result<Vec<PoolObject>, StoreError>> {
        Box::pin(async move {
            let list = self
                .pools
                .list(&ListParams::default())
                .await
                .map_err(|e| self.error(Kind::Pool, "*", "list", e))?;
            let mut out = Vec::new();
            for p in &list.items {
                match pool_to_model(p) {
                    Ok(o) => out.push(o),
                    // One bad pool must not stop allocation from the others.
                    Err(e) => tracing::warn!(error = %e, "ignoring invalid IPPool"),
                }
            }
            Ok(out)
        })
    }

    fn list_blocks(&self) -> BoxFuture<'_, Result<Vec<BlockObject>, StoreError>> {
        Box::pin(async move {
            let list = self
                .blocks
                .list(&ListParams::default())
                .await
                .map_err(|e| self.error(Kind::Block, "*", "list", e))?;
            Ok(list.items.into_iter().map(block_object).collect())
        })
    }

    fn get_block<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<BlockObject>, StoreError>> {
        Box::pin(async move {
            let b = self
                .blocks
                .get_opt(name)
                .await
                .map_err(|e| self.error(Kind::Block, name, "get", e))?;
            Ok(b.map(block_object))
        })
    }

    fn create_block<'a>(
        &'a self,
        name: &'a str,
        spec: &'a IpamBlockSpec,
    ) -> BoxFuture<'a, Result<BlockObject, StoreError>> {
        Box::pin(async move {
            self.metrics.ipam_api_writes.inc();
            let created = self
                .blocks
                .create(&PostParams::default(), &block_resource(name, None, spec))
                .await
                .map_err(|e| self.error(Kind::Block, name, "create", e))?;
            Ok(block_object(created))
        })
    }

    fn update_block<'a>(
        &'a self,
        obj: &'a BlockObject,
    ) -> BoxFuture<'a, Result<BlockObject, StoreError>> {
        Box::pin(async move {
            self.metrics.ipam_api_writes.inc();
            let res = block_resource(&obj.name, Some(obj.resource_version.clone()), &obj.spec);
            let updated = self
                .blocks
                .replace(&obj.name, &PostParams::default(), &res)
                .await
                .map_err(|e| self.error(Kind::Block, &obj.name, "update", e))?;
            Ok(block_object(updated))
        })
    }

    fn delete_block<'a>(
        &'a self,
        name: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.metrics.ipam_api_writes.inc();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(resource_version.to_string()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            self.blocks
                .delete(name, &dp)
                .await
                .map_err(|e| self.error(Kind::Block, name, "delete", e))?;
            Ok(())
        })
    }

    fn watch_blocks(&self) -> BoxStream<'static, Result<BlockEvent, StoreError>> {
        let stream = watcher::watcher(self.blocks.clone(), watcher::Config::default());
        let mut initial: Vec<BlockObject> = Vec::new();
        stream
            .filter_map(move |ev| {
                let out = match ev {
                    Ok(Event::Init) => {
                        initial.clear();
                        None
                    }
                    Ok(Event::InitApply(b)) => {
                        initial.push(block_object(b));
                        None
                    }
                    Ok(Event::InitDone) => {
                        Some(Ok(BlockEvent::Resync(std::mem::take(&mut initial))))
                    }
                    Ok(Event::Apply(b)) => Some(Ok(BlockEvent::Applied(block_object(b)))),
                    Ok(Event::Delete(b)) => Some(Ok(BlockEvent::Deleted {
                        name: b.metadata.name.unwrap_or_default(),
                    })),
                    Err(e) => Some(Err(StoreError::Unavailable {
                        reason: format!("watching IPAMBlocks: {e}"),
                        source: Some(Box::new(e)),
                    })),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::{AllowedUse, Cidr, IPPoolSpec};

    #[test]
    fn pools_convert_with_defaults_and_errors() {
        let mut p = IPPool::new(
            "v4",
            IPPoolSpec {
                cidr: Cidr("198.19.0.0/16".into()),
                block_size: Some(28),
                node_selector: None,
                disabled: true,
                allowed_uses: vec![],
                disable_bgp_export: false,
                nat_outgoing: None,
                vxlan_mode: None,
            },
        );
        p.metadata.resource_version = Some("7".into());
        let o = pool_to_model(&p).expect("valid");
        assert_eq!((o.name.as_str(), o.resource_version.as_str()), ("v4", "7"));
        assert_eq!(o.spec.block_prefix(), 28);
        assert!(o.spec.disabled);
        assert_eq!(
            o.spec.allowed_uses,
            vec![AllowedUse::Workload, AllowedUse::Tunnel]
        );
        assert!(o.spec.node_selector.is_everything());
        // The nodeSelector is compiled here: a valid one reaches the
        // allocator as the text form would parse, an invalid one makes the
        // pool invalid.
        let expr =
            |operator: &str, values: Option<Vec<String>>| {
                Some(serde_json::from_value(serde_json::json!({
                "matchExpressions": [{"key": "zone", "operator": operator, "values": values}]
            })).expect("selector"))
            };
        p.spec.node_selector = expr("In", Some(vec!["a".into()]));
        let o = pool_to_model(&p).expect("valid");
        assert_eq!(o.spec.node_selector, "zone=a".parse().expect("text"));
        p.spec.node_selector = expr("In", None);
        assert!(matches!(pool_to_model(&p), Err(StoreError::Invalid { .. })));
        p.spec.node_selector = None;
        p.spec.cidr = Cidr("198.19.0.0/33".into());
        assert!(matches!(pool_to_model(&p), Err(StoreError::Invalid { .. })));
    }

    #[test]
    fn api_statuses_map_to_store_errors() {
        let api = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: "m".into(),
                ..kube::core::Status::default()
            }))
        };
        assert!(matches!(
            map_error(Kind::Block, "b", api(409, "AlreadyExists")),
            StoreError::AlreadyExists { .. }
        ));
        assert!(matches!(
            map_error(Kind::Block, "b", api(409, "Conflict")),
            StoreError::Conflict { .. }
        ));
        assert!(matches!(
            map_error(Kind::Block, "b", api(404, "NotFound")),
            StoreError::NotFound { .. }
        ));
        assert!(matches!(
            map_error(Kind::Block, "b", api(422, "Invalid")),
            StoreError::Invalid { .. }
        ));
        assert!(matches!(
            map_error(Kind::Block, "b", api(503, "ServiceUnavailable")),
            StoreError::Unavailable { .. }
        ));
        assert!(matches!(
            map_error(Kind::Block, "b", api(429, "TooManyRequests")),
            StoreError::Unavailable { .. }
        ));
    }
}
