//! HTTP front end: routes Kubernetes API paths to store commands and renders
//! the replies (objects, lists, tables, watch streams, Status errors).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::actor::{ApiCall, Command, Discovery, Reply, Target, Verb};
use super::auth::{Attributes, MASTERS, User};
use super::error::ApiError;
use super::patch::PatchKind;
use super::proto::ProtoError;
use super::resources::ResourceDef;
use super::schema::FieldValidation;
use super::store::{ListOpts, ListResult, WatchOpts};
use super::table::{Output, at_version, partial, table};
use super::traffic::{Tag, Traffic};
use super::watch::{self, StreamOpts};
use super::write::DeleteOpts;

/// Response body: a full buffer or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// To the store task.
    pub cmd: mpsc::Sender<Command>,
    /// Artificial latency before each request.
    pub latency: Duration,
    /// Bookmark period for watches that allow them.
    pub bookmark_every: Duration,
    /// Watch delivery delay (see [`StreamOpts::delivery_delay`]).
    pub watch_delay: Duration,
    /// Largest accepted request body.
    pub max_body: usize,
    /// Default watch timeout when the client gives none.
    pub default_watch_timeout: Duration,
    /// Response bytes per user, resource and verb (`/margay/traffic`).
    pub traffic: Arc<Traffic>,
}

fn full(code: u16, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    full(code, serde_json::to_vec(v).unwrap_or_default())
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn pct_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters (last value wins, `dryRun` may repeat).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (pct_decode(k, true), pct_decode(v, true))
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> &str {
        self.0
            .iter()
            .rev()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), "true" | "1" | "True")
    }
    fn dry_run(&self) -> Result<bool, ApiError> {
        let mut dry = false;
        for (_, v) in self.0.iter().filter(|(k, _)| k == "dryRun") {
            match v.as_str() {
                "All" => dry = true,
                "" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported dryRun value {other:?}: supported values: \"All\""
                    )));
                }
            }
        }
        Ok(dry)
    }
    fn list_opts(&self) -> Result<ListOpts, ApiError> {
        let limit = match self.get("limit") {
            "" => 0,
            l => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                .max(0) as u64,
        };
        Ok(ListOpts {
            label_selector: self.get("labelSelector").to_string(),
            field_selector: self.get("fieldSelector").to_string(),
            limit,
            continue_token: self.get("continue").to_string(),
            resource_version: self.get("resourceVersion").to_string(),
            resource_version_match: self.get("resourceVersionMatch").to_string(),
        })
    }
}

async fn ask<T>(
    sh: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    sh.cmd
        .send(make(tx))
        .await
        .map_err(|_| ApiError::unavailable())?;
    rx.await.map_err(|_| ApiError::unavailable())
}

/// The bearer token of a request, if it carries one.
fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// The request's Content-Type ("" if none).
fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A write's field manager (`fieldManager`, else the User-Agent's product).
fn manager(q: &Query, user_agent: &str) -> Result<String, ApiError> {
    let fm = q.get("fieldManager");
    if fm.len() > super::managed::MAX_MANAGER_LEN {
        return Err(ApiError::bad_request(format!(
            "fieldManager: Too long: may not be more than {} bytes",
            super::managed::MAX_MANAGER_LEN
        )));
    }
    Ok(super::managed::manager_of(fm, user_agent))
}

/// Authenticates `token`, and with `attrs` authorizes the request.
async fn authorize(
    sh: &Shared,
    token: Option<String>,
    attrs: Option<Attributes>,
) -> Result<User, ApiError> {
    ask(sh, |reply| Command::Authorize {
        token,
        attrs,
        reply,
    })
    .await?
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(max)),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

fn decode_object(content_type: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(raw)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
        "application/yaml" => serde_yaml_ng::from_slice(raw)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => super::proto::decode(raw).map_err(|e| match e {
            ProtoError::Malformed(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::unsupported_media_type(&format!("{ct}: {e}")),
        }),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn version_doc() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-margay",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Handles one request; never fails at the HTTP level.
pub async fn handle(req: Request<Incoming>, sh: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    if !sh.latency.is_zero() {
        tokio::time::sleep(sh.latency).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut tag = Tag::default();
    let r = route(req, &sh, &mut tag)
        .await
        .unwrap_or_else(|e| error_response(&e));
    debug!(%method, %path, code = r.status().as_u16(), user = ?tag.user, "request");
    Ok(r.map(|b| sh.traffic.count(&tag, b)))
}

async fn route(
    req: Request<Incoming>,
    sh: &Shared,
    tag: &mut Tag,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| pct_decode(s, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = req.method() == Method::GET;
    let token = bearer(&req);
    // Resource requests are authorized in `resource`; everything else but
    // the public health and version paths needs an authenticated user.
    let public = matches!(
        segs.as_slice(),
        ["version"] | ["healthz" | "livez" | "readyz", ..]
    );
    let resource_request = matches!(segs.as_slice(), ["api", _, rest @ ..] if !rest.is_empty())
        || matches!(segs.as_slice(), ["apis", _, _, rest @ ..] if !rest.is_empty());
    if !public && !resource_request {
        let user = authorize(sh, token.clone(), None).await?;
        tag.user = Some(user.name.clone());
        tag.resource = format!("/{}", segs.first().unwrap_or(&""));
        tag.verb = req.method().as_str().to_lowercase();
        if segs.first() == Some(&"margay") && !user.groups.iter().any(|g| g == MASTERS) {
            return Err(ApiError::rbac_forbidden(
                "",
                "",
                None,
                format!("User \"{}\" cannot use the test hooks", user.name),
            ));
        }
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let discovery = |d: Discovery| async move {
        match ask(sh, |tx| Command::Discovery(d, tx)).await? {
            Some(doc) => Ok(json_response(200, &doc)),
            None => Err(ApiError::path_not_found()),
        }
    };
    match segs.as_slice() {
        ["version"] if get => Ok(json_response(200, &version_doc())),
        ["healthz" | "livez" | "readyz", ..] if get => {
            let mut r = full(200, b"ok".to_vec());
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        ["api" | "apis"] if get && super::discovery::wanted(accept).is_some() => {
            let v = super::discovery::wanted(accept).unwrap_or("v2");
            let doc = ask(sh, |tx| {
                Command::Discovery(Discovery::Aggregated(segs[0] == "api", v), tx)
            })
            .await?;
            let mut r = json_response(200, &doc.unwrap_or_default());
            if let Ok(ct) = HeaderValue::from_str(&super::discovery::content_type(v)) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            Ok(r)
        }
        ["api"] if get => discovery(Discovery::Api).await,
        ["apis"] if get => discovery(Discovery::Apis).await,
        ["api", v] if get => discovery(Discovery::Resources(String::new(), v.to_string())).await,
        ["apis", g] if get => discovery(Discovery::Group(g.to_string())).await,
        ["apis", g, v] if get => {
            discovery(Discovery::Resources(g.to_string(), v.to_string())).await
        }
        ["openapi", "v2"] if get => {
            let defs = ask(sh, Command::Served).await?;
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("protobuf") {
                let mut r = full(200, super::openapi::v2_protobuf(&defs));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(super::openapi::PROTOBUF_V2),
                );
                Ok(r)
            } else {
                Ok(json_response(200, &super::openapi::v2_json(&defs)))
            }
        }
        ["margay", "traffic"] if get => Ok(json_response(200, &sh.traffic.report())),
        ["margay", "compact"] if req.method() == Method::POST => {
            let rv = ask(sh, Command::Compact).await?;
            Ok(json_response(
                200,
                &json!({"compactedResourceVersion": rv.to_string()}),
            ))
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "serviceaccounts",
            name,
            "token",
        ] if req.method() == Method::POST => {
            let (namespace, name) = (ns.to_string(), name.to_string());
            let ct = content_type(&req);
            let raw = read_body(req, sh.max_body).await?;
            let body = if raw.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                decode_object(&ct, &raw)?
            };
            let out = ask(sh, |reply| Command::TokenRequest {
                token,
                namespace,
                name,
                body,
                reply,
            })
            .await??;
            Ok(json_response(201, &out))
        }
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if req.method() == Method::POST => {
            let ct = content_type(&req);
            let body = decode_object(&ct, &read_body(req, sh.max_body).await?)?;
            let out = ask(sh, |reply| Command::AccessReview { token, body, reply }).await??;
            Ok(json_response(201, &out))
        }
        ["api", v, rest @ ..] if !rest.is_empty() => {
            let (v, rest) = (
                v.to_string(),
                rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            resource(req, sh, tag, token, String::new(), v, rest).await
        }
        ["apis", g, v, rest @ ..] if !rest.is_empty() => {
            let (g, v, rest) = (
                g.to_string(),
                v.to_string(),
                rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            resource(req, sh, tag, token, g, v, rest).await
        }
        ["api" | "apis" | "version", ..] => {
            Err(ApiError::method_not_allowed(req.method().as_str()))
        }
        _ => Err(ApiError::path_not_found()),
    }
}

async fn resource(
    req: Request<Incoming>,
    sh: &Shared,
    tag: &mut Tag,
    token: Option<String>,
    group: String,
    version: String,
    rest: Vec<String>,
) -> Result<Response<Body>, ApiError> {
    let q = Query::parse(req.uri().query().unwrap_or_default());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (watch_prefix, rest) = match rest.split_first() {
        Some((w, r)) if w == "watch" => (true, r),
        _ => (false, rest.as_slice()),
    };
    let (namespace, plural, tail) = match rest {
        [ns_kw, ns, plural, tail @ ..]
            if ns_kw == "namespaces"
                && !(tail.is_empty() && (plural == "status" || plural == "finalize")) =>
        {
            (Some(ns.clone()), plural.clone(), tail)
        }
        [plural, tail @ ..] => (None, plural.clone(), tail),
        [] => return Err(ApiError::path_not_found()),
    };
    let (name, status) = match tail {
        [] => (None, false),
        [n] => (Some(n.clone()), false),
        [n, s] if s == "status" => (Some(n.clone()), true),
        _ => return Err(ApiError::path_not_found()),
    };
    let target = Target {
        group,
        version,
        plural,
        namespace,
        name,
        status,
    };
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let output = Output::negotiate(&accept, q.get("includeObject"))
        .ok_or_else(|| ApiError::not_acceptable(&accept))?;
    let content_type = content_type(&req);
    let watching = watch_prefix || q.flag("watch");
    let method = req.method().clone();
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, _) if watching => {
            let mut list = q.list_opts()?;
            if let Some(n) = &target.name {
                let pin = format!(
                    "metadata.name={}",
                    n.replace('\\', "\\\\")
                        .replace(',', "\\,")
                        .replace('=', "\\=")
                );
                list.field_selector = if list.field_selector.is_empty() {
                    pin
                } else {
                    format!("{},{pin}", list.field_selector)
                };
            }
            Verb::Watch(WatchOpts {
                list,
                send_initial_events: q.flag("sendInitialEvents"),
                bookmarks: q.flag("allowWatchBookmarks"),
            })
        }
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => Verb::List(q.list_opts()?),
        (&Method::POST, false) => {
            let body = decode_object(&content_type, &read_body(req, sh.max_body).await?)?;
            Verb::Create {
                body,
                dry_run: q.dry_run()?,
                fv: FieldValidation::parse(q.get("fieldValidation"))?,
                manager: manager(&q, &user_agent)?,
            }
        }
        (&Method::PUT, true) => {
            let body = decode_object(&content_type, &read_body(req, sh.max_body).await?)?;
            Verb::Update {
                body,
                dry_run: q.dry_run()?,
                fv: FieldValidation::parse(q.get("fieldValidation"))?,
                manager: manager(&q, &user_agent)?,
            }
        }
        (&Method::PATCH, true) => {
            let kind = PatchKind::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
            if kind == PatchKind::Apply {
                return Err(ApiError::unsupported_media_type(
                    "application/apply-patch+yaml (server-side apply is not supported by this test server)",
                ));
            }
            let raw = read_body(req, sh.max_body).await?;
            let body = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            Verb::Patch {
                kind,
                body,
                dry_run: q.dry_run()?,
                fv: FieldValidation::parse(q.get("fieldValidation"))?,
                manager: manager(&q, &user_agent)?,
            }
        }
        (&Method::DELETE, named) => {
            let raw = read_body(req, sh.max_body).await?;
            let mut o = DeleteOpts {
                dry_run: q.dry_run()?,
                ..Default::default()
            };
            if !raw.iter().all(u8::is_ascii_whitespace) {
                let body: Value = serde_json::from_slice(&raw)
                    .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
                o.uid = body
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                o.resource_version = body
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                match body.get("dryRun").and_then(Value::as_array) {
                    Some(d) if d.iter().any(|v| v == "All") => o.dry_run = true,
                    Some(d) if !d.is_empty() => {
                        return Err(ApiError::bad_request(
                            "unsupported dryRun value: supported values: \"All\"",
                        ));
                    }
                    _ => {}
                }
            }
            if named {
                Verb::Delete(o)
            } else {
                Verb::DeleteCollection(q.list_opts()?, o)
            }
        }
        (m, _) => return Err(ApiError::method_not_allowed(m.as_str())),
    };
    let attrs = Attributes {
        verb: match &verb {
            Verb::Get => "get",
            Verb::List(_) => "list",
            Verb::Watch(_) => "watch",
            Verb::Create { .. } => "create",
            Verb::Update { .. } => "update",
            Verb::Patch { .. } => "patch",
            Verb::Delete(_) => "delete",
            Verb::DeleteCollection(..) => "deletecollection",
        }
        .to_string(),
        group: target.group.clone(),
        resource: target.plural.clone(),
        subresource: if target.status {
            "status".into()
        } else {
            String::new()
        },
        namespace: target.namespace.clone(),
        name: match &verb {
            Verb::List(o) => Attributes::name_from_field_selector(&o.field_selector),
            Verb::Watch(w) => Attributes::name_from_field_selector(&w.list.field_selector),
            Verb::Create { .. } => None,
            _ => target.name.clone(),
        },
    };
    let counted = Tag {
        user: None,
        resource: match (attrs.group.as_str(), attrs.subresource.as_str()) {
            ("", "") => attrs.resource.clone(),
            ("", sub) => format!("{}/{sub}", attrs.resource),
            (g, "") => format!("{}.{g}", attrs.resource),
            (g, sub) => format!("{}.{g}/{sub}", attrs.resource),
        },
        verb: attrs.verb.clone(),
    };
    let user = authorize(sh, token, Some(attrs)).await?;
    *tag = Tag {
        user: Some(user.name),
        ..counted
    };
    let timeout = match q.get("timeoutSeconds") {
        "" => sh.default_watch_timeout,
        t => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
    };
    let bookmarks = matches!(&verb, Verb::Watch(w) if w.bookmarks);
    let reply = ask(sh, |reply| {
        Command::Api(Box::new(ApiCall {
            target,
            verb,
            reply,
        }))
    })
    .await??;
    Ok(match reply {
        Reply::Object(def, obj, code) => {
            let body = match output {
                _ if obj.get("kind").and_then(Value::as_str) != Some(def.kind.as_str()) => {
                    (*obj).clone()
                }
                Output::Json => at_version(&def, &obj),
                Output::Partial => partial(&obj),
                Output::Table(v, inc) => {
                    table(&def, v, inc, &[&obj], super::meta::object_rv(&obj), None)
                }
            };
            json_response(code, &body)
        }
        Reply::List(def, list) => list_response(&def, output, &list),
        Reply::Watch(def, start, rx) => {
            let opts = StreamOpts {
                output,
                timeout,
                bookmark_every: bookmarks.then_some(sh.bookmark_every),
                delivery_delay: sh.watch_delay,
            };
            let body = watch::spawn(def, start, rx, opts);
            let stream = ReceiverStream::new(body).map(|b| Ok::<_, Infallible>(Frame::data(b)));
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    })
}

fn list_response(def: &ResourceDef, output: Output, list: &ListResult) -> Response<Body> {
    let cont = list.continue_token.as_deref();
    let mut meta = json!({"resourceVersion": list.rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(n) = list.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    let (kind, api_version) = match output {
        Output::Table(v, inc) => {
            let parsed: Vec<Arc<Value>> = list.items.iter().map(|o| o.value()).collect();
            let items: Vec<&Value> = parsed.iter().map(|a| &**a).collect();
            return json_response(200, &table(def, v, inc, &items, list.rv, cont));
        }
        Output::Partial => (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
        Output::Json => (def.list_kind.clone(), def.api_version()),
    };
    // Written by hand so large lists are not deep-copied into one Value.
    let mut out = Vec::with_capacity(256 + list.items.len() * 512);
    let head = json!({"kind": kind, "apiVersion": api_version, "metadata": meta});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    out.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    out.extend_from_slice(b",\"items\":[");
    let want = def.api_version();
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let r = match output {
            Output::Partial => serde_json::to_writer(&mut out, &partial(&item.value())),
            _ if item.api_version() == want => {
                out.extend_from_slice(item.json());
                Ok(())
            }
            _ => serde_json::to_writer(&mut out, &at_version(def, &item.value())),
        };
        if r.is_err() {
            return error_response(&ApiError::internal("cannot encode the list"));
        }
    }
    out.extend_from_slice(b"]}");
    full(200, out)
}
