//! Writes: create, update (PUT), patch, delete, deletecollection, with the
//! real server's metadata rules, preconditions, finalizers, dry-run and the
//! special cases of namespaces, pods, services and CRDs.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::crd::crd_resources;
use super::error::ApiError;
use super::managed;
use super::meta::{check_labels, check_name, meta_str, name_suffix, new_uid, rfc3339, unix_now};
use super::patch::{self, PatchError, PatchKind};
use super::resources::{GroupResource, ResourceDef, Special, StatusOnCreate};
use super::store::{EventType, ListOpts, Store, key_of};

/// DELETE options (query and body merged).
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// A successful write: the object (or Status) and the HTTP code.
#[derive(Debug)]
pub struct Written {
    /// Response body.
    pub body: Arc<Value>,
    /// 200 or 201.
    pub code: u16,
}

fn ok(body: Arc<Value>) -> Result<Written, ApiError> {
    Ok(Written { body, code: 200 })
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let meta = &mut obj["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Everything but metadata and status (what `generation` tracks).
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    /// Checks the body's kind/apiVersion/metadata against the request.
    fn check_body(
        def: &ResourceDef,
        ns: Option<&str>,
        body: &mut Value,
        url_name: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(obj) = body.as_object() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        };
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind.is_empty() {
            return Err(ApiError::bad_request(
                "Object 'Kind' is missing in the request body",
            ));
        }
        if kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({kind}) does not match the resource ({})",
                def.kind
            )));
        }
        if api_version != def.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
        if obj.get("metadata").is_some_and(|m| !m.is_object()) {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        let meta = metadata_mut(body);
        if let Some(n) = url_name {
            let got = meta.get("name").and_then(Value::as_str).unwrap_or_default();
            if got != n {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({got}) does not match the name on the URL ({n})"
                )));
            }
        }
        match ns {
            Some(ns) => {
                let got = meta
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !got.is_empty() && got != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta.insert("namespace".into(), json!(ns));
            }
            None => {
                meta.remove("namespace");
            }
        }
        Ok(())
    }

    fn check_meta(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
        let name = meta_str(obj, "name").unwrap_or_default();
        if let Err(why) = check_name(def.name_rule, name) {
            return Err(ApiError::invalid_field(
                &def.group,
                &def.kind,
                name,
                "metadata.name",
                name,
                &why,
            ));
        }
        if let Some(m) = obj.get("metadata")
            && let Err((field, value, why)) = check_labels(m)
        {
            return Err(ApiError::invalid_field(
                &def.group, &def.kind, name, &field, &value, &why,
            ));
        }
        Ok(())
    }

    /// Resource-specific defaults and validation; returns CRD resources to serve.
    fn prepare(
        &mut self,
        def: &ResourceDef,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Option<Vec<ResourceDef>>, ApiError> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        match def.special {
            Special::Namespace => {
                let meta = metadata_mut(obj);
                if !meta.get("labels").is_some_and(Value::is_object) {
                    meta.insert("labels".into(), json!({}));
                }
                meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
                if old.is_none() {
                    if obj.pointer("/spec/finalizers").is_none() {
                        obj["spec"] = json!({"finalizers": ["kubernetes"]});
                    }
                    obj["status"] = json!({"phase": "Active"});
                }
                Ok(None)
            }
            Special::Service => {
                let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned();
                if !obj.get("spec").is_some_and(Value::is_object) {
                    obj["spec"] = json!({});
                }
                let ty = obj
                    .pointer("/spec/type")
                    .and_then(Value::as_str)
                    .unwrap_or("ClusterIP")
                    .to_string();
                obj["spec"]["type"] = json!(ty);
                let ip = obj
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if ty != "ExternalName" && ip.is_empty() {
                    let ip = match old_ip {
                        Some(Value::String(s)) if !s.is_empty() => s,
                        _ => self.allocate_cluster_ip(),
                    };
                    obj["spec"]["clusterIP"] = json!(ip);
                    obj["spec"]["clusterIPs"] = json!([ip]);
                } else if !ip.is_empty() && obj.pointer("/spec/clusterIPs").is_none() {
                    // As the real server: clusterIPs[0] is clusterIP.
                    obj["spec"]["clusterIPs"] = json!([ip]);
                }
                Ok(None)
            }
            Special::Crd => {
                let defs = crd_resources(obj)?;
                let group = obj
                    .pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let plural = obj
                    .pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Some(old) = old {
                    for f in ["/spec/scope", "/spec/group", "/spec/names/plural"] {
                        if old.pointer(f) != obj.pointer(f) {
                            let v = obj.pointer(f).map(Value::to_string).unwrap_or_default();
                            return Err(ApiError::invalid_field(
                                &def.group,
                                &def.kind,
                                &name,
                                &f[1..].replace('/', "."),
                                &v,
                                "field is immutable",
                            ));
                        }
                    }
                }
                if self.registry.plural_taken(&group, &plural, &name) {
                    return Err(ApiError::invalid_field(
                        &def.group,
                        &def.kind,
                        &name,
                        "spec.names.plural",
                        &plural,
                        "is already in use",
                    ));
                }
                Ok(Some(defs))
            }
            Special::Pod | Special::None => Ok(None),
        }
    }

    fn allocate_cluster_ip(&self) -> String {
        let gr = GroupResource {
            group: String::new(),
            plural: "services".into(),
        };
        let used: std::collections::HashSet<String> = self
            .objects
            .get(&gr)
            .map(|m| {
                m.values()
                    .filter_map(|s| {
                        s.value()
                            .pointer("/spec/clusterIP")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        // 10.96.0.0/16, skipping .0.0 and the conventional .0.1 (kubernetes) and .0.10 (DNS).
        (2u32..65_535)
            .filter(|i| *i != 10)
            .map(|i| format!("10.96.{}.{}", i >> 8, i & 0xff))
            .find(|ip| !used.contains(ip))
            .unwrap_or_else(|| "10.96.255.255".into())
    }

    /// POST: create an object.
    pub fn create(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Written, ApiError> {
        Self::check_body(def, ns, &mut body, None)?;
        if meta_str(&body, "resourceVersion").is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let meta = metadata_mut(&mut body);
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() && !generate.is_empty() {
            name = (0..16)
                .map(|_| format!("{generate}{}", name_suffix()))
                .find(|n| !self.contains(def, ns, n))
                .unwrap_or_else(|| format!("{generate}{}", name_suffix()));
            meta.insert("name".into(), json!(name));
        }
        Self::check_meta(def, &body)?;
        if let Some(ns) = ns
            && !self.namespace_exists(ns)
        {
            let res = super::error::Res {
                group: "",
                plural: "namespaces",
            };
            return Err(ApiError::not_found(res, ns));
        }
        if self.contains(def, ns, &name) {
            return Err(ApiError::already_exists(def.res(), &name));
        }
        match &def.status_on_create {
            StatusOnCreate::Keep => {}
            StatusOnCreate::Drop => {
                if let Some(m) = body.as_object_mut() {
                    m.remove("status");
                }
            }
            StatusOnCreate::Reset(v) => body["status"] = v.clone(),
        }
        let crd_defs = self.prepare(def, &mut body, None)?;
        if let Some(schema) = &def.schema {
            schema.apply(def, &mut body, None, self.field_validation)?;
        }
        let meta = metadata_mut(&mut body);
        for k in [
            "selfLink",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(rfc3339(unix_now())));
        meta.insert("generation".into(), json!(1));
        managed::record(def, None, &mut body, &self.field_manager, "", unix_now());
        if dry_run {
            return Ok(Written {
                body: Arc::new(body),
                code: 201,
            });
        }
        let rv = self.next_rv();
        metadata_mut(&mut body).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(body);
        self.commit(def, EventType::Added, key_of(ns, &name), obj.clone());
        if let Some(defs) = crd_defs {
            self.registry.set_crd(&name, defs);
        }
        Ok(Written {
            body: obj,
            code: 201,
        })
    }

    /// PUT on the object or its `/status`.
    pub fn update(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Written, ApiError> {
        Self::check_body(def, ns, &mut body, Some(name))?;
        let Some(old) = self.get_obj(def, ns, name) else {
            if def.create_on_update && !status {
                if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                return self.create(def, ns, body, dry_run);
            }
            return Err(ApiError::not_found(def.res(), name));
        };
        let asked_rv = meta_str(&body, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        let old_rv = meta_str(&old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        if !asked_rv.is_empty() && asked_rv != old_rv {
            return Err(ApiError::conflict(def.res(), name, ApiError::STALE));
        }
        let old_uid = meta_str(&old, "uid").unwrap_or_default().to_string();
        if let Some(uid) = meta_str(&body, "uid").filter(|u| !u.is_empty() && *u != old_uid) {
            let why = format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
            );
            return Err(ApiError::conflict(def.res(), name, &why));
        }
        let mut new = if status {
            let mut n = (*old).clone();
            match body.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            if def.status_subresource
                && let Some(m) = body.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            body
        };
        // Fields the client cannot change.
        {
            let meta = metadata_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
            ] {
                match old.pointer(&format!("/metadata/{k}")) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            meta.remove("selfLink");
            meta.remove("managedFields");
            meta.insert("resourceVersion".into(), json!(old_rv));
        }
        Self::check_meta(def, &new)?;
        let crd_defs = if status {
            None
        } else {
            self.prepare(def, &mut new, Some(&old))?
        };
        if let Some(schema) = &def.schema {
            schema.apply(def, &mut new, Some(&old), self.field_validation)?;
        }
        let deleting = old.pointer("/metadata/deletionTimestamp").is_some();
        let (old_fin, new_fin) = (finalizers(&old), finalizers(&new));
        if deleting && new_fin.iter().any(|f| !old_fin.contains(f)) {
            return Err(ApiError::invalid_field(
                &def.group,
                &def.kind,
                name,
                "metadata.finalizers",
                &new_fin.join(","),
                "no new finalizers can be added if the object is being deleted",
            ));
        }
        if spec_part(&new) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        let sub = if status { "status" } else { "" };
        managed::record(
            def,
            Some(&old),
            &mut new,
            &self.field_manager,
            sub,
            unix_now(),
        );
        if new == *old {
            return ok(old);
        }
        if dry_run {
            return ok(Arc::new(new));
        }
        let rv = self.next_rv();
        metadata_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(new);
        let key = key_of(ns, name);
        if deleting && new_fin.is_empty() {
            self.commit(def, EventType::Deleted, key, obj.clone());
        } else {
            self.commit(def, EventType::Modified, key, obj.clone());
            if let Some(defs) = crd_defs {
                self.registry.set_crd(name, defs);
            }
        }
        ok(obj)
    }

    /// PATCH on the object or its `/status`.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Written, ApiError> {
        if kind == PatchKind::Apply {
            return Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml (server-side apply is not supported by this test server)",
            ));
        }
        if kind == PatchKind::Strategic && def.crd.is_some() {
            return Err(ApiError::unsupported_media_type(
                "application/strategic-merge-patch+json (not supported for custom resources)",
            ));
        }
        let old = self.get(def, ns, name)?;
        let mut doc = (*old).clone();
        doc["apiVersion"] = json!(def.api_version());
        doc["kind"] = json!(def.kind);
        patch::apply(kind, &mut doc, body).map_err(|e| match e {
            PatchError::Malformed(m) => ApiError::bad_request(m),
            PatchError::NotApplicable(m) => {
                ApiError::patch_not_applicable(&def.group, &def.kind, name, &m)
            }
        })?;
        self.update(def, ns, name, doc, status, dry_run)
    }

    /// DELETE of one object.
    pub fn delete(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        o: &DeleteOpts,
    ) -> Result<Written, ApiError> {
        let old = self.get(def, ns, name)?;
        let uid = meta_str(&old, "uid").unwrap_or_default();
        if let Some(want) = o.uid.as_deref().filter(|u| *u != uid) {
            let why = format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
            );
            return Err(ApiError::conflict(def.res(), name, &why));
        }
        let rv = meta_str(&old, "resourceVersion").unwrap_or_default();
        if let Some(want) = o.resource_version.as_deref().filter(|r| *r != rv) {
            let why = format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
            );
            return Err(ApiError::conflict(def.res(), name, &why));
        }
        let success = |obj: &Value| {
            let mut details = json!({"name": name, "kind": def.plural, "uid": meta_str(obj, "uid").unwrap_or_default()});
            if !def.group.is_empty() {
                details["group"] = json!(def.group);
            }
            Arc::new(
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            )
        };
        let answer = |obj: Arc<Value>| {
            if def.return_deleted {
                obj
            } else {
                success(&obj)
            }
        };
        if o.dry_run {
            return ok(answer(old));
        }
        let key = key_of(ns, name);
        if !finalizers(&old).is_empty() {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return ok(answer(old));
            }
            let mut new = (*old).clone();
            let rv = self.next_rv();
            let meta = metadata_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(rfc3339(unix_now())));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            let obj = Arc::new(new);
            self.commit(def, EventType::Modified, key, obj.clone());
            return ok(answer(obj));
        }
        match def.special {
            Special::Namespace => self.delete_namespace_contents(name),
            Special::Crd => self.delete_crd_objects(&old),
            _ => {}
        }
        let obj = self.remove_now(def, key, old);
        if def.special == Special::Crd {
            self.registry.remove_crd(name);
        }
        ok(answer(obj))
    }

    /// Removes an object at a new revision; returns it with that revision.
    fn remove_now(&mut self, def: &ResourceDef, key: String, old: Arc<Value>) -> Arc<Value> {
        let mut last = (*old).clone();
        let rv = self.next_rv();
        metadata_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(last);
        self.commit(def, EventType::Deleted, key, obj.clone());
        obj
    }

    fn delete_namespace_contents(&mut self, ns: &str) {
        let prefix = format!("{ns}/");
        let mut doomed = Vec::new();
        for (gr, m) in &self.objects {
            for (k, v) in m
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
            {
                doomed.push((gr.clone(), k.clone(), v.clone()));
            }
        }
        doomed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (gr, key, obj) in doomed {
            if let Some(def) = self.registry.any_version(&gr).filter(|d| d.namespaced) {
                self.remove_now(&def, key, obj.value());
            }
        }
    }

    fn delete_crd_objects(&mut self, crd: &Value) {
        let at = |p: &str| {
            crd.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let gr = GroupResource {
            group: at("/spec/group"),
            plural: at("/spec/names/plural"),
        };
        let Some(def) = self.registry.any_version(&gr) else {
            // No version served: nobody can watch these; drop them silently.
            self.objects.remove(&gr);
            return;
        };
        let doomed: Vec<(String, Arc<Value>)> = self
            .objects
            .get(&gr)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.value())).collect())
            .unwrap_or_default();
        for (key, obj) in doomed {
            self.remove_now(&def, key, obj);
        }
        self.objects.remove(&gr);
    }

    /// DELETE on a collection: deletes what the selectors match; returns them as a list.
    pub fn delete_collection(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        lo: &ListOpts,
        o: &DeleteOpts,
    ) -> Result<Written, ApiError> {
        let mut lo = lo.clone();
        lo.limit = 0;
        lo.continue_token.clear();
        let listed = self.list(def, ns, &lo)?;
        let mut items = Vec::new();
        for obj in listed.items {
            let obj = obj.value();
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            let ons = def
                .namespaced
                .then(|| meta_str(&obj, "namespace").unwrap_or_default().to_string());
            let one = DeleteOpts {
                uid: None,
                resource_version: None,
                dry_run: o.dry_run,
            };
            match self.delete(def, ons.as_deref(), &name, &one) {
                Ok(_) if o.dry_run => items.push((*obj).clone()),
                Ok(_) => {
                    if let Some(now) = self.get_obj(def, ons.as_deref(), &name) {
                        items.push((*now).clone());
                    } else {
                        items.push((*obj).clone());
                    }
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let rv = self.current_rv();
        ok(Arc::new(json!({
            "kind": def.list_kind,
            "apiVersion": def.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        })))
    }
}
