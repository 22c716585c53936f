//! `metadata.managedFields` as the real server records them for writes that
//! are not server-side apply (operation `Update`): one entry per field
//! manager (and subresource) listing, as `fieldsV1`, the fields it set.
//!
//! A real server attaches them to every object it stores, so every list and
//! watch event carries them besides the object's own fields. Without them a
//! byte count taken against this server (bench_scale's API bytes per pod
//! event) or an agent's cache size flatters the agent.
//!
//! The manager is the request's `fieldManager`, else the `User-Agent` up to
//! its first `/`, as the real server derives it. Ownership follows the
//! structured-merge-diff rules for Update at field granularity:
//! - the fields a write adds or changes become the writer's and leave
//!   every other manager;
//! - removed fields leave every manager;
//! - a manager left with no field is dropped;
//! - only the writer's entry gets a new `time`, and only when the write
//!   changed a field.
//!
//! Granularity:
//! - maps and objects are per key (`f:<key>`, with `.` for the map itself),
//!   unless the CRD schema says `x-kubernetes-map-type: atomic`;
//! - lists are atomic (one leaf) unless the CRD schema says
//!   `x-kubernetes-list-type: map` (`k:{…}` per element) or `set`
//!   (`v:<value>` per element);
//! - built-in kinds have no schema here, so the lists that are associative
//!   in the real types are keyed from a table ([`builtin_list`]), and
//!   `metadata` is walked the same way for every kind.
//!
//! Approximations: managedFields a client sends are ignored (clients send
//! back what they read, or none, and the real server then keeps its own);
//! typed built-in structs and lists get a `.` entry like maps do (the real
//! server has none for a field the Go type always holds, as `spec`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::meta::rfc3339;
use super::resources::ResourceDef;

/// One field's path: `f:`/`k:`/`v:` elements, `.` last for a map itself.
type Path = Vec<String>;

/// Metadata the server owns (not attributed to any manager).
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Most bytes a `fieldManager` may have (the real server's limit).
pub const MAX_MANAGER_LEN: usize = 128;

/// The manager of a write: `fieldManager`, else the User-Agent's product.
pub fn manager_of(field_manager: &str, user_agent: &str) -> String {
    if !field_manager.is_empty() {
        return field_manager.to_string();
    }
    let product = user_agent.split('/').next().unwrap_or_default();
    product.chars().take(MAX_MANAGER_LEN).collect()
}

enum ListKind<'a> {
    Atomic,
    Set,
    /// Keyed by these fields; each element granular (`true`: atomic, as
    /// an owner reference).
    Map(Vec<&'a str>, bool),
}

/// How a list of a built-in kind is merged, by its field name (what the
/// real types declare with `listType`/`patchMergeKey`).
fn builtin_list(field: &str, items: &[Value]) -> ListKind<'static> {
    let first = items.first().and_then(Value::as_object);
    let has = |k: &str| first.is_some_and(|o| o.contains_key(k));
    match field {
        "finalizers" => ListKind::Set,
        "ownerReferences" => ListKind::Map(vec!["uid"], true),
        "conditions" => ListKind::Map(vec!["type"], false),
        "taints" => ListKind::Map(vec!["key", "effect"], false),
        "podIPs" | "hostIPs" => ListKind::Map(vec!["ip"], false),
        "ports" if has("containerPort") => ListKind::Map(vec!["containerPort", "protocol"], false),
        "ports" if has("port") => ListKind::Map(vec!["port", "protocol"], false),
        "addresses" if has("type") => ListKind::Map(vec!["type"], false),
        "volumeMounts" => ListKind::Map(vec!["mountPath"], false),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => ListKind::Map(vec!["name"], false),
        _ => ListKind::Atomic,
    }
}

fn schema_list(schema: &Value) -> ListKind<'_> {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if keys.is_empty() {
                ListKind::Atomic
            } else {
                ListKind::Map(keys, false)
            }
        }
        _ => ListKind::Atomic,
    }
}

/// The schema of `key` in an object whose schema is `schema`.
fn child<'s>(schema: Option<&'s Value>, key: &str) -> Option<&'s Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// Every field of `v` under `path`, with its value (None for `.`).
struct Walker<'a> {
    out: BTreeMap<Path, Option<&'a Value>>,
    path: Path,
    builtin: bool,
}

impl<'a> Walker<'a> {
    fn leaf(&mut self, v: &'a Value) {
        self.out.insert(self.path.clone(), Some(v));
    }

    /// `.`: the map or list itself (owned by who made it present).
    fn marker(&mut self) {
        self.path.push(".".into());
        self.out.insert(self.path.clone(), None);
        self.path.pop();
    }

    fn walk(&mut self, v: &'a Value, schema: Option<&Value>, field: &str) {
        match v {
            Value::Object(m) => {
                let atomic = schema
                    .and_then(|s| s.get("x-kubernetes-map-type"))
                    .is_some_and(|t| t == "atomic");
                if atomic {
                    return self.leaf(v);
                }
                self.marker();
                for (k, c) in m {
                    self.path.push(format!("f:{k}"));
                    self.walk(c, child(schema, k), k);
                    self.path.pop();
                }
            }
            Value::Array(items) => {
                let kind = match schema {
                    Some(s) => schema_list(s),
                    None if self.builtin => builtin_list(field, items),
                    None => ListKind::Atomic,
                };
                let item_schema = schema.and_then(|s| s.get("items"));
                match kind {
                    ListKind::Atomic => self.leaf(v),
                    ListKind::Set => {
                        self.marker();
                        for e in items {
                            self.path.push(format!("v:{e}"));
                            self.leaf(e);
                            self.path.pop();
                        }
                    }
                    ListKind::Map(keys, atomic_elems) => {
                        let mut seen = BTreeSet::new();
                        let mut elems = Vec::with_capacity(items.len());
                        for e in items {
                            let mut k = Map::new();
                            for key in &keys {
                                if let Some(x) = e.get(*key) {
                                    k.insert((*key).to_string(), x.clone());
                                }
                            }
                            let k = Value::Object(k).to_string();
                            if k == "{}" || !seen.insert(k.clone()) {
                                // No key, or a duplicate: the real server
                                // would refuse; take the list as atomic.
                                return self.leaf(v);
                            }
                            elems.push((k, e));
                        }
                        self.marker();
                        for (k, e) in elems {
                            self.path.push(format!("k:{k}"));
                            if atomic_elems {
                                self.leaf(e);
                            } else {
                                self.walk(e, item_schema, "");
                            }
                            self.path.pop();
                        }
                    }
                }
            }
            _ => self.leaf(v),
        }
    }
}

/// The fields of `obj` a manager can own.
fn fields_of<'a>(obj: &'a Value, def: &ResourceDef) -> BTreeMap<Path, Option<&'a Value>> {
    let schema = def.schema.as_ref().map(|s| &*s.schema);
    let mut w = Walker {
        out: BTreeMap::new(),
        path: Vec::new(),
        builtin: schema.is_none(),
    };
    let Some(m) = obj.as_object() else {
        return w.out;
    };
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let Some(meta) = v.as_object() else { continue };
                w.path.push("f:metadata".into());
                for (mk, mv) in meta {
                    if SERVER_META.contains(&mk.as_str()) {
                        continue;
                    }
                    w.path.push(format!("f:{mk}"));
                    w.builtin = true;
                    w.walk(mv, None, mk);
                    w.builtin = schema.is_none();
                    w.path.pop();
                }
                w.path.pop();
            }
            _ => {
                w.path.push(format!("f:{k}"));
                w.walk(v, child(schema, k), k);
                w.path.pop();
            }
        }
    }
    w.out
}

/// One managedFields entry.
struct Entry {
    manager: String,
    operation: String,
    subresource: String,
    /// Everything else of the entry as stored (apiVersion, time, …).
    rest: Map<String, Value>,
    fields: BTreeSet<Path>,
}

fn paths_of(tree: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = tree.as_object() else { return };
    if m.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, c) in m {
        prefix.push(k.clone());
        paths_of(c, prefix, out);
        prefix.pop();
    }
}

fn render(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut node = &mut root;
        for el in p {
            let next = node.entry(el.clone()).or_insert_with(|| json!({}));
            node = match next {
                Value::Object(m) => m,
                _ => unreachable!("every node is an object"),
            };
        }
    }
    Value::Object(root)
}

fn entries_of(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(Value::as_object)
        .map(|e| {
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut fields = BTreeSet::new();
            if let Some(t) = e.get("fieldsV1") {
                paths_of(t, &mut Vec::new(), &mut fields);
            }
            let rest = e
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "manager" | "operation" | "subresource" | "fieldsV1"
                    )
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                subresource: s("subresource"),
                rest,
                fields,
            }
        })
        .collect()
}

/// Sets `new`'s managedFields for a write by `manager` (to `subresource`,
/// "" for the object itself) that turned `old` (None: a create) into `new`.
/// Whatever managedFields `new` carries are replaced.
pub fn record(
    def: &ResourceDef,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    now: i64,
) {
    let (changed, removed) = {
        let before = old.map(|o| fields_of(o, def)).unwrap_or_default();
        let after = fields_of(new, def);
        let changed: BTreeSet<Path> = after
            .iter()
            .filter(|(p, v)| before.get(*p) != Some(*v))
            .map(|(p, _)| p.clone())
            .collect();
        let removed: BTreeSet<Path> = before
            .keys()
            .filter(|p| !after.contains_key(*p))
            .cloned()
            .collect();
        (changed, removed)
    };
    let mut entries = old.map(entries_of).unwrap_or_default();
    let mut mine = false;
    for e in entries.iter_mut() {
        e.fields.retain(|p| !removed.contains(p));
        let is_mine =
            e.manager == manager && e.operation == "Update" && e.subresource == subresource;
        if is_mine {
            mine = true;
            e.fields.extend(changed.iter().cloned());
        } else {
            e.fields.retain(|p| !changed.contains(p));
        }
        // Only the writer's entry is stamped (the real server leaves the
        // time of a manager that lost fields as it was).
        if is_mine && !changed.is_empty() {
            e.rest.insert("time".into(), json!(rfc3339(now)));
            e.rest.insert("apiVersion".into(), json!(def.api_version()));
        }
    }
    if !mine && !changed.is_empty() {
        let mut rest = Map::new();
        rest.insert("apiVersion".into(), json!(def.api_version()));
        rest.insert("fieldsType".into(), json!("FieldsV1"));
        rest.insert("time".into(), json!(rfc3339(now)));
        entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            subresource: subresource.to_string(),
            rest,
            fields: changed,
        });
    }
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut m = e.rest;
            if !e.manager.is_empty() {
                m.insert("manager".into(), json!(e.manager));
            }
            m.insert("operation".into(), json!(e.operation));
            if !e.subresource.is_empty() {
                m.insert("subresource".into(), json!(e.subresource));
            }
            m.insert("fieldsV1".into(), render(&e.fields));
            Value::Object(m)
        })
        .collect();
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::ResourceDef;

    fn pods() -> ResourceDef {
        super::super::resources::builtins()
            .into_iter()
            .find(|d| d.plural == "pods")
            .expect("pods served")
    }

    fn fields(obj: &Value, i: usize) -> Value {
        obj["metadata"]["managedFields"][i]["fieldsV1"].clone()
    }

    #[test]
    fn a_create_gives_every_field_to_its_writer() {
        let def = pods();
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"app": "a"},
                         "ownerReferences": [{"uid": "o1", "name": "rs", "kind": "ReplicaSet", "apiVersion": "apps/v1"}]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}
        });
        record(&def, None, &mut pod, "kube-controller-manager", "", 0);
        let mf = &pod["metadata"]["managedFields"];
        assert_eq!(mf.as_array().map(Vec::len), Some(1), "{mf}");
        assert_eq!(mf[0]["manager"], "kube-controller-manager");
        assert_eq!(mf[0]["operation"], "Update");
        assert_eq!(mf[0]["apiVersion"], "v1");
        assert_eq!(mf[0]["fieldsType"], "FieldsV1");
        assert_eq!(mf[0]["time"], "1970-01-01T00:00:00Z");
        assert_eq!(
            fields(&pod, 0),
            json!({
                "f:metadata": {
                    "f:labels": {".": {}, "f:app": {}},
                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"o1\"}": {}}
                },
                "f:spec": {".": {}, "f:containers": {".": {}, "k:{\"name\":\"c\"}": {
                    ".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:containerPort": {}, "f:protocol": {}}}}}}
            })
        );
    }

    #[test]
    fn an_update_moves_changed_fields_to_their_writer() {
        let def = pods();
        let old = {
            let mut p = json!({"metadata": {"name": "p", "labels": {"app": "a", "tier": "x"}},
                               "spec": {"nodeName": "n1"}});
            record(&def, None, &mut p, "creator", "", 0);
            p
        };
        // kubectl label app=b, drops tier: the changed label moves, the
        // removed one leaves every manager, the rest stays the creator's.
        let mut new = json!({"metadata": {"name": "p", "labels": {"app": "b"}},
                             "spec": {"nodeName": "n1"}});
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        record(&def, Some(&old), &mut new, "kubectl-label", "", 60);
        let mf = new["metadata"]["managedFields"]
            .as_array()
            .expect("list")
            .clone();
        assert_eq!(mf.len(), 2, "{mf:?}");
        assert_eq!(mf[0]["manager"], "creator");
        assert_eq!(
            mf[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {".": {}}}, "f:spec": {".": {}, "f:nodeName": {}}})
        );
        assert_eq!(
            mf[0]["time"], "1970-01-01T00:00:00Z",
            "not the writer: time kept"
        );
        assert_eq!(mf[1]["time"], "1970-01-01T00:01:00Z");
        assert_eq!(mf[1]["manager"], "kubectl-label");
        assert_eq!(
            mf[1]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}}}})
        );
        // The same write again changes nothing.
        let again_old = new.clone();
        let mut again = new.clone();
        record(&def, Some(&again_old), &mut again, "kubectl-label", "", 120);
        assert_eq!(again, again_old);
    }

    #[test]
    fn a_status_write_is_its_own_entry() {
        let def = pods();
        let mut old = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        record(&def, None, &mut old, "creator", "", 0);
        let mut new = old.clone();
        new["status"] = json!({"podIP": "198.19.0.1", "podIPs": [{"ip": "198.19.0.1"}]});
        record(&def, Some(&old), &mut new, "kubelet", "status", 5);
        let mf = &new["metadata"]["managedFields"];
        assert_eq!(mf[1]["manager"], "kubelet");
        assert_eq!(mf[1]["subresource"], "status");
        assert_eq!(
            mf[1]["fieldsV1"],
            json!({"f:status": {".": {}, "f:podIP": {},
                   "f:podIPs": {".": {}, "k:{\"ip\":\"198.19.0.1\"}": {".": {}, "f:ip": {}}}}})
        );
    }

    #[test]
    fn a_crd_schema_decides_the_granularity() {
        let mut def = pods();
        def.schema = Some(
            super::super::schema::CrdSchema::new(json!({
                "type": "object",
                "properties": {"spec": {"type": "object", "properties": {
                    "labels": {"type": "object", "x-kubernetes-map-type": "atomic",
                               "additionalProperties": {"type": "string"}},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "addresses": {"type": "array", "items": {"type": "string"}},
                    "names": {"type": "array", "x-kubernetes-list-type": "set",
                              "items": {"type": "string"}}
                }}}
            }))
            .expect("schema"),
        );
        let mut obj = json!({"metadata": {"name": "e"}, "spec": {
            "labels": {"a": "1", "b": "2"}, "tags": {"t": "x"},
            "addresses": ["198.19.0.1"], "names": ["x", "y"]}});
        record(&def, None, &mut obj, "margay-node", "", 0);
        assert_eq!(
            fields(&obj, 0),
            json!({"f:spec": {".": {}, "f:addresses": {}, "f:labels": {},
                   "f:names": {".": {}, "v:\"x\"": {}, "v:\"y\"": {}},
                   "f:tags": {".": {}, "f:t": {}}}})
        );
    }

    #[test]
    fn the_manager_is_the_field_manager_or_the_user_agents_product() {
        assert_eq!(manager_of("kubectl-edit", "kubectl/v1.31"), "kubectl-edit");
        assert_eq!(manager_of("", "margay-node/0.1.0 (linux)"), "margay-node");
        assert_eq!(manager_of("", ""), "");
    }
}
