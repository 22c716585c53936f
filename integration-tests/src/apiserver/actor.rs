//! The task that owns the [`Store`]: HTTP handlers send it [`Command`]s and
//! get replies on oneshot channels; it publishes every change on the watch
//! broadcast and hands debounced snapshots to the persister.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use super::auth::{self, Attributes, Auth, User};
use super::error::ApiError;
use super::patch::PatchKind;
use super::resources::ResourceDef;
use super::schema::FieldValidation;
use super::store::{Event, ListOpts, ListResult, Snapshot, Store, WatchOpts, WatchStart};
use super::write::DeleteOpts;

/// What a request addresses.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Group ("" = core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural.
    pub plural: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// `/status` subresource.
    pub status: bool,
}

/// The verb and its arguments.
#[derive(Debug)]
pub enum Verb {
    /// GET one object.
    Get,
    /// GET a collection.
    List(ListOpts),
    /// GET a collection with `watch`.
    Watch(WatchOpts),
    /// POST.
    Create {
        /// Body.
        body: Value,
        /// `dryRun=All`.
        dry_run: bool,
        /// `fieldValidation`.
        fv: FieldValidation,
        /// The field manager ([`super::managed::manager_of`]).
        manager: String,
    },
    /// PUT.
    Update {
        /// Body.
        body: Value,
        /// `dryRun=All`.
        dry_run: bool,
        /// `fieldValidation`.
        fv: FieldValidation,
        /// The field manager ([`super::managed::manager_of`]).
        manager: String,
    },
    /// PATCH.
    Patch {
        /// Patch type.
        kind: PatchKind,
        /// Patch document.
        body: Value,
        /// `dryRun=All`.
        dry_run: bool,
        /// `fieldValidation`.
        fv: FieldValidation,
        /// The field manager ([`super::managed::manager_of`]).
        manager: String,
    },
    /// DELETE of one object.
    Delete(DeleteOpts),
    /// DELETE of a collection.
    DeleteCollection(ListOpts, DeleteOpts),
}

/// The answer to an API request.
#[derive(Debug)]
pub enum Reply {
    /// An object (or a Success Status) with its HTTP code.
    Object(Arc<ResourceDef>, Arc<Value>, u16),
    /// A list.
    List(Arc<ResourceDef>, ListResult),
    /// A watch to stream.
    Watch(
        Arc<ResourceDef>,
        WatchStart,
        broadcast::Receiver<Arc<Event>>,
    ),
}

/// Which discovery document.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// `/api`.
    Api,
    /// `/apis`.
    Apis,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    Resources(String, String),
    /// Aggregated `/api` (true) or `/apis` (false), at a version (`v2`).
    Aggregated(bool, &'static str),
}

/// One API request and where to answer it.
#[derive(Debug)]
pub struct ApiCall {
    /// What it addresses.
    pub target: Target,
    /// What to do.
    pub verb: Verb,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Reply, ApiError>>,
}

/// Messages to the store task.
#[derive(Debug)]
pub enum Command {
    /// An API request.
    Api(Box<ApiCall>),
    /// A discovery document (`None` = 404).
    Discovery(Discovery, oneshot::Sender<Option<Value>>),
    /// Every served resource (for `/openapi/v2`).
    Served(oneshot::Sender<Vec<Arc<ResourceDef>>>),
    /// Who presents `token`, and (with attributes) whether RBAC lets them.
    Authorize {
        /// The bearer token, if any.
        token: Option<String>,
        /// The resource request to authorize (None: authenticate only).
        attrs: Option<Attributes>,
        /// The user, or 401 / 403.
        reply: oneshot::Sender<Result<User, ApiError>>,
    },
    /// TokenRequest: a token for ServiceAccount `namespace/name`.
    TokenRequest {
        /// The caller's bearer token.
        token: Option<String>,
        /// ServiceAccount namespace.
        namespace: String,
        /// ServiceAccount name.
        name: String,
        /// The TokenRequest body.
        body: Value,
        /// The TokenRequest with its status.
        reply: oneshot::Sender<Result<Value, ApiError>>,
    },
    /// SelfSubjectAccessReview (`kubectl auth can-i`).
    AccessReview {
        /// The caller's bearer token.
        token: Option<String>,
        /// The review.
        body: Value,
        /// The review with its status.
        reply: oneshot::Sender<Result<Value, ApiError>>,
    },
    /// Test hook: drop history; replies with the current revision.
    Compact(oneshot::Sender<u64>),
    /// Stop after a last snapshot.
    Shutdown(oneshot::Sender<()>),
}

fn resolve(store: &Store, t: &Target, verb: &Verb) -> Result<Arc<ResourceDef>, ApiError> {
    let def = store
        .registry
        .lookup(&t.group, &t.version, &t.plural)
        .ok_or_else(ApiError::path_not_found)?;
    match (def.namespaced, t.namespace.is_some()) {
        (false, true) => return Err(ApiError::path_not_found()),
        (true, false) => match verb {
            Verb::List(_) | Verb::Watch(_) => {}
            Verb::Create { .. } => return Err(ApiError::method_not_allowed("POST")),
            Verb::DeleteCollection(..) => return Err(ApiError::method_not_allowed("DELETE")),
            _ => return Err(ApiError::path_not_found()),
        },
        _ => {}
    }
    if t.status {
        if !def.status_subresource {
            return Err(ApiError::path_not_found());
        }
        if !matches!(verb, Verb::Get | Verb::Update { .. } | Verb::Patch { .. }) {
            return Err(ApiError::method_not_allowed("status"));
        }
    }
    Ok(def)
}

fn api(
    store: &mut Store,
    events: &broadcast::Sender<Arc<Event>>,
    t: Target,
    verb: Verb,
) -> Result<Reply, ApiError> {
    let def = resolve(store, &t, &verb)?;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or_default();
    let obj = |w: super::write::Written| Reply::Object(def.clone(), w.body, w.code);
    Ok(match verb {
        Verb::Get => Reply::Object(def.clone(), store.get(&def, ns, name)?, 200),
        Verb::List(o) => Reply::List(def.clone(), store.list(&def, ns, &o)?),
        Verb::Watch(o) => {
            let start = store.watch(&def, ns, &o)?;
            // Subscribed before the next command runs: no change can fall in between.
            Reply::Watch(def.clone(), start, events.subscribe())
        }
        Verb::Create {
            body,
            dry_run,
            fv,
            manager,
        } => {
            store.field_validation = fv;
            store.field_manager = manager;
            obj(store.create(&def, ns, body, dry_run)?)
        }
        Verb::Update {
            body,
            dry_run,
            fv,
            manager,
        } => {
            store.field_validation = fv;
            store.field_manager = manager;
            obj(store.update(&def, ns, name, body, t.status, dry_run)?)
        }
        Verb::Patch {
            kind,
            body,
            dry_run,
            fv,
            manager,
        } => {
            store.field_validation = fv;
            store.field_manager = manager;
            obj(store.patch(&def, ns, name, kind, &body, t.status, dry_run)?)
        }
        Verb::Delete(o) => obj(store.delete(&def, ns, name, &o)?),
        Verb::DeleteCollection(lo, o) => obj(store.delete_collection(&def, ns, &lo, &o)?),
    })
}

/// Mints a token for a ServiceAccount the caller may create tokens of.
fn token_request(
    store: &Store,
    auth: &Auth,
    caller: Option<&str>,
    namespace: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let user = auth.authenticate(store, caller)?;
    auth::authorize(
        store,
        &user,
        &Attributes {
            verb: "create".into(),
            group: String::new(),
            resource: "serviceaccounts".into(),
            subresource: "token".into(),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
        },
    )?;
    let def = store
        .registry
        .lookup("", "v1", "serviceaccounts")
        .ok_or_else(ApiError::path_not_found)?;
    let sa = store.get(&def, Some(namespace), name)?;
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let secs = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(3600)
        .clamp(600, 1 << 32);
    let (token, exp) = auth.mint(namespace, name, uid, secs);
    let exp = super::meta::rfc3339(i64::try_from(exp).unwrap_or(i64::MAX));
    let mut out = body.clone();
    out["apiVersion"] = serde_json::json!("authentication.k8s.io/v1");
    out["kind"] = serde_json::json!("TokenRequest");
    out["status"] = serde_json::json!({"token": token, "expirationTimestamp": exp});
    Ok(out)
}

/// Runs the store until `Shutdown` (or every sender is gone).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Arc<Event>>,
    persist: Option<watch::Sender<Option<Arc<Snapshot>>>>,
    debounce: Duration,
    server_addr: String,
    auth: Auth,
) {
    let mut flush_at: Option<Instant> = None;
    let mut shutdown_reply = None;
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = async { if let Some(t) = flush_at { tokio::time::sleep_until(t).await } }, if flush_at.is_some() => {
                flush_at = None;
                if let Some(p) = &persist {
                    p.send_replace(Some(Arc::new(store.snapshot())));
                }
                continue;
            }
        };
        let Some(cmd) = cmd else { break };
        match cmd {
            Command::Api(call) => {
                let ApiCall {
                    target,
                    verb,
                    reply,
                } = *call;
                let r = api(&mut store, &events, target, verb);
                let _ = reply.send(r);
            }
            Command::Discovery(d, reply) => {
                let r = &store.registry;
                let doc = match d {
                    Discovery::Api => Some(r.api_versions(&server_addr)),
                    Discovery::Apis => Some(r.api_group_list()),
                    Discovery::Group(g) => r.api_group(&g),
                    Discovery::Resources(g, v) => r.resource_list(&g, &v),
                    Discovery::Aggregated(core, v) => Some(r.aggregated(core, v)),
                };
                let _ = reply.send(doc);
            }
            Command::Served(reply) => {
                let _ = reply.send(store.registry.served());
            }
            Command::Authorize {
                token,
                attrs,
                reply,
            } => {
                let r = auth
                    .authenticate(&store, token.as_deref())
                    .and_then(|u| match &attrs {
                        Some(a) => auth::authorize(&store, &u, a).map(|()| u),
                        None => Ok(u),
                    });
                let _ = reply.send(r);
            }
            Command::TokenRequest {
                token,
                namespace,
                name,
                body,
                reply,
            } => {
                let _ = reply.send(token_request(
                    &store,
                    &auth,
                    token.as_deref(),
                    &namespace,
                    &name,
                    &body,
                ));
            }
            Command::AccessReview { token, body, reply } => {
                let r = auth
                    .authenticate(&store, token.as_deref())
                    .and_then(|u| auth::access_review(&store, &u, &body));
                let _ = reply.send(r);
            }
            Command::Compact(reply) => {
                store.compact();
                debug!(rv = store.current_rv(), "history compacted");
                let _ = reply.send(store.current_rv());
            }
            Command::Shutdown(reply) => {
                shutdown_reply = Some(reply);
                break;
            }
        }
        for ev in store.drain_outbox() {
            // No receivers is fine.
            let _ = events.send(ev);
        }
        if store.dirty {
            store.dirty = false;
            if persist.is_some() && flush_at.is_none() {
                flush_at = Some(Instant::now() + debounce);
            }
        }
    }
    if let (Some(p), Some(_)) = (&persist, flush_at) {
        p.send_replace(Some(Arc::new(store.snapshot())));
    }
    drop(persist);
    if let Some(r) = shutdown_reply {
        let _ = r.send(());
    }
}
