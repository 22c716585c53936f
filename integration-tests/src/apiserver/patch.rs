//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and an
//! approximation of Kubernetes' strategic merge patch.
//!
//! The real strategic merge patch knows, from the Go types, which lists merge
//! by which key. We have no Go types, so lists merge by key when either
//! - the patch carries `$setElementOrder/<field>` (kubectl sends it for every
//!   merge list it touches; its entries name the merge key), or
//! - the field is one of the well-known merge lists of core types
//!   (`containers`, `volumes`, `env`, `ports`, `conditions`, ...).
//!
//! Every other list is replaced, as in a merge patch. Directives supported:
//! `$patch: replace|delete|merge`, `$retainKeys`, `$setElementOrder/…`,
//! `$deleteFromPrimitiveList/…`. Anything else starting with `$` is dropped.

use serde_json::{Map, Value};

/// The PATCH content types the server understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply: not supported).
    Apply,
}

impl PatchKind {
    /// From a Content-Type header (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not a patch of that kind (→ 400).
    #[error("{0}")]
    Malformed(String),
    /// The patch does not apply to the object (→ 422).
    #[error("{0}")]
    NotApplicable(String),
}

/// Applies a patch of `kind` to `doc`.
pub fn apply(kind: PatchKind, doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(doc, patch);
            Ok(())
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| PatchError::Malformed(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(doc, &ops).map_err(|e| PatchError::NotApplicable(e.to_string()))
        }
        PatchKind::Strategic => {
            let Some(p) = patch.as_object() else {
                return Err(PatchError::Malformed(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            };
            strategic_merge(doc, p, 0)
        }
        PatchKind::Apply => Err(PatchError::Malformed(
            "server-side apply is not supported".into(),
        )),
    }
}

const MAX_DEPTH: usize = 64;

/// Merge key of a well-known Kubernetes merge list, chosen by field name and
/// by which key the patch elements carry.
fn known_merge_key(field: &str, sample: &Map<String, Value>) -> Option<&'static str> {
    let by_field: &[&'static str] = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "containerStatuses"
        | "initContainerStatuses" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "ports" => &["containerPort", "port"],
        "hostAliases" | "podIPs" | "hostIPs" => &["ip"],
        "conditions" | "addresses" => &["type"],
        "ownerReferences" => &["uid"],
        "topologySpreadConstraints" => &["topologyKey"],
        _ => &[],
    };
    by_field.iter().copied().find(|k| sample.contains_key(*k))
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Value::Object(Map::new());
            // Applying to an empty object drops directives consistently.
            if strategic_merge(&mut out, m, 0).is_err() {
                return Value::Object(
                    m.iter()
                        .filter(|(k, _)| !k.starts_with('$'))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                );
            }
            out
        }
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn strategic_merge(
    doc: &mut Value,
    patch: &Map<String, Value>,
    depth: usize,
) -> Result<(), PatchError> {
    if depth > MAX_DEPTH {
        return Err(PatchError::Malformed("patch nests too deeply".into()));
    }
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            *doc = strip_directives(&Value::Object(m));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(target) = doc.as_object_mut() else {
        return Ok(());
    };
    if let Some(retain) = patch.get("$retainKeys") {
        let keys: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError::Malformed("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        target.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Some(del) = v.as_array() else {
                return Err(PatchError::Malformed(format!("{k} must be a list")));
            };
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|x| !del.contains(x));
            }
        }
    }
    for (k, pv) in patch {
        if k.starts_with('$') {
            continue;
        }
        match pv {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(pm) => {
                let entry = target.entry(k.clone()).or_insert(Value::Null);
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                strategic_merge(entry, pm, depth + 1)?;
                if entry.is_null() {
                    target.remove(k);
                }
            }
            Value::Array(items) => {
                let order = patch
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                let merged = merge_list(target.get(k), items, k, order, depth)?;
                target.insert(k.clone(), merged);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    // A `$setElementOrder` without the list itself only reorders.
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && !patch.contains_key(field)
            && let (Some(order), Some(current)) = (order.as_array(), target.get(field))
        {
            let merged = merge_list(Some(current), &[], field, Some(order), depth)?;
            target.insert(field.to_string(), merged);
        }
    }
    Ok(())
}

fn merge_list(
    current: Option<&Value>,
    items: &[Value],
    field: &str,
    order: Option<&Vec<Value>>,
    depth: usize,
) -> Result<Value, PatchError> {
    let current: Vec<Value> = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sample = order
        .and_then(|o| o.first())
        .or_else(|| items.first())
        .or_else(|| current.first());
    let key = match sample {
        Some(Value::Object(m)) => {
            if order.is_some() && m.len() == 1 {
                m.keys().next().map(String::as_str)
            } else {
                known_merge_key(field, m)
            }
        }
        Some(_) if order.is_some() => {
            // Merge list of primitives (e.g. finalizers): union, then order.
            let mut out = current;
            for it in items {
                if !out.contains(it) {
                    out.push(it.clone());
                }
            }
            return Ok(Value::Array(reorder(out, order, |v| Some(v.clone()))));
        }
        _ => None,
    };
    let Some(key) = key else {
        return Ok(Value::Array(items.iter().map(strip_directives).collect()));
    };
    let key = key.to_string();
    let mut out = current;
    for it in items {
        let Some(pm) = it.as_object() else {
            return Err(PatchError::Malformed(format!(
                "elements of {field} must be objects"
            )));
        };
        let kv = pm.get(&key).cloned();
        let pos = kv
            .as_ref()
            .and_then(|kv| out.iter().position(|o| o.get(&key) == Some(kv)));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                out.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => strategic_merge(&mut out[p], pm, depth + 1)?,
            None => out.push(strip_directives(it)),
        }
    }
    let k2 = key.clone();
    Ok(Value::Array(reorder(out, order, move |v| {
        v.get(&k2).cloned()
    })))
}

/// Orders `list` by the position of each element's key in `order`; elements
/// not in `order` keep their relative order after the ordered ones.
fn reorder(
    list: Vec<Value>,
    order: Option<&Vec<Value>>,
    key: impl Fn(&Value) -> Option<Value>,
) -> Vec<Value> {
    let Some(order) = order else {
        return list;
    };
    let order_keys: Vec<Option<Value>> = order
        .iter()
        .map(|o| match o {
            Value::Object(m) if m.len() == 1 => m.values().next().cloned(),
            other => Some(other.clone()),
        })
        .collect();
    let mut indexed: Vec<(usize, usize, Value)> = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let k = key(&v);
            let pos = order_keys
                .iter()
                .position(|o| o.is_some() && *o == k)
                .unwrap_or(usize::MAX);
            (pos, i, v)
        })
        .collect();
    indexed.sort_by_key(|(pos, i, _)| (*pos, *i));
    indexed.into_iter().map(|(_, _, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn smp(mut doc: Value, p: Value) -> Value {
        apply(PatchKind::Strategic, &mut doc, &p).unwrap();
        doc
    }

    #[test]
    fn kubectl_apply_container_image_change() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}]}});
        // What kubectl apply sends when only b's image changes.
        let p = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                                "containers": [{"image": "b:2", "name": "b"}]}});
        let out = smp(doc, p);
        assert_eq!(out["spec"]["containers"][0]["image"], "a:1");
        assert_eq!(
            out["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert_eq!(out["spec"]["containers"][1]["image"], "b:2");
    }

    #[test]
    fn known_keys_delete_and_order() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let out = smp(
            doc.clone(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}, {"name": "d"}]}}),
        );
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "c", "d"]);
        let out = smp(
            doc,
            json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}}),
        );
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
    }

    #[test]
    fn unknown_lists_replace_and_maps_merge() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ingress": [{"from": []}], "x": 1}});
        let out = smp(
            doc,
            json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"ingress": []}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"ingress": [], "x": 1}})
        );
    }

    #[test]
    fn primitive_merge_lists_and_retain_keys() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            doc,
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "c"], "$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]},
                   "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn replace_directive_and_errors() {
        let out = smp(
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$patch": "replace", "c": 3}}),
        );
        assert_eq!(out, json!({"spec": {"c": 3}}));
        let mut d = json!({});
        assert!(matches!(
            apply(PatchKind::Strategic, &mut d, &json!([1])),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            apply(PatchKind::Json, &mut d, &json!({"op": "add"})),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            apply(
                PatchKind::Json,
                &mut d,
                &json!([{"op": "remove", "path": "/nope"}])
            ),
            Err(PatchError::NotApplicable(_))
        ));
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = json!({"a": deep});
        }
        assert!(apply(PatchKind::Strategic, &mut json!({}), &deep).is_err());
    }
}
