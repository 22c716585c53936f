//! Output shapes other than plain JSON: `meta.k8s.io` Table (what `kubectl get`
//! prints) and PartialObjectMetadata (what metadata-only watchers ask for).

use serde_json::{Value, json};

use super::meta::{human_duration, parse_rfc3339, unix_now};
use super::resources::ResourceDef;
use super::select::field_value;

/// How to render objects, from the Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The objects themselves.
    Json,
    /// A Table (`meta.k8s.io/<version>`), with the row object as asked.
    Table(&'static str, Include),
    /// PartialObjectMetadata(List).
    Partial,
}

/// `includeObject` of a Table request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// No row object.
    None,
    /// PartialObjectMetadata (the default).
    Metadata,
    /// The full object.
    Object,
}

impl Output {
    /// From the Accept header and the `includeObject` parameter; `None` = 406.
    pub fn negotiate(accept: &str, include: &str) -> Option<Self> {
        let include = match include {
            "None" => Include::None,
            "Object" => Include::Object,
            _ => Include::Metadata,
        };
        if accept.trim().is_empty() {
            return Some(Output::Json);
        }
        for media in accept.split(',') {
            let mut parts = media.split(';').map(str::trim);
            let ty = parts.next().unwrap_or_default();
            let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
            let param = |k: &str| params.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
            if !matches!(
                ty,
                "application/json" | "*/*" | "application/*" | "application/json+stream"
            ) {
                continue;
            }
            match (param("as"), param("g"), param("v")) {
                (None, _, _) => return Some(Output::Json),
                (Some("Table"), Some("meta.k8s.io"), Some("v1")) => {
                    return Some(Output::Table("v1", include));
                }
                (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => {
                    return Some(Output::Table("v1beta1", include));
                }
                (
                    Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                    Some("meta.k8s.io"),
                    Some("v1"),
                ) => {
                    return Some(Output::Partial);
                }
                _ => continue,
            }
        }
        None
    }
}

/// The object as served at `def`'s version.
pub fn at_version(def: &ResourceDef, obj: &Value) -> Value {
    let mut o = obj.clone();
    if o.get("kind").and_then(Value::as_str) == Some(def.kind.as_str()) {
        o["apiVersion"] = json!(def.api_version());
    }
    o
}

/// PartialObjectMetadata of an object.
pub fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn col(name: &str, ty: &str, priority: i64) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn age(obj: &Value) -> String {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
        .map(|t| human_duration(unix_now() - t))
        .unwrap_or_else(|| "<unknown>".into())
}

fn s(obj: &Value, path: &str) -> String {
    field_value(obj, path)
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn label_selector_text(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(
            match e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" => format!("{key} in ({})", vals.join(",")),
                "NotIn" => format!("{key} notin ({})", vals.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                other => format!("{key} {other}"),
            },
        );
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// Column definitions and a function producing the cells of one object.
/// Cells of one row.
type Cells<'a> = Box<dyn Fn(&Value) -> Vec<Value> + 'a>;

fn columns(def: &ResourceDef) -> (Vec<Value>, Cells<'_>) {
    let name = |o: &Value| json!(s(o, "metadata.name"));
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
            ],
            Box::new(move |o| {
                let total = o
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let statuses = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array);
                let ready = statuses.map_or(0, |a| {
                    a.iter()
                        .filter(|c| c.get("ready") == Some(&json!(true)))
                        .count()
                });
                let restarts: i64 = statuses.map_or(0, |a| {
                    a.iter()
                        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                        .sum()
                });
                let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating".to_string()
                } else {
                    let r = s(o, "status.reason");
                    if r.is_empty() {
                        s(o, "status.phase")
                    } else {
                        r
                    }
                };
                vec![
                    name(o),
                    json!(format!("{ready}/{total}")),
                    json!(status),
                    json!(restarts.to_string()),
                    json!(age(o)),
                    json!(or_none(s(o, "status.podIP"))),
                    json!(or_none(s(o, "spec.nodeName"))),
                ]
            }),
        ),
        ("", "nodes") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Roles", "string", 0),
                col("Age", "string", 0),
                col("Version", "string", 0),
                col("Internal-IP", "string", 1),
            ],
            Box::new(move |o| {
                let ready = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                    .and_then(|c| c.get("status").and_then(Value::as_str))
                    .map(|st| match st {
                        "True" => "Ready",
                        "False" => "NotReady",
                        _ => "Unknown",
                    })
                    .unwrap_or("Unknown");
                let mut status = ready.to_string();
                if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                    status.push_str(",SchedulingDisabled");
                }
                let mut roles: Vec<&str> = o
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|l| {
                        l.keys()
                            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                            .collect()
                    })
                    .unwrap_or_default();
                roles.sort_unstable();
                let ip = o
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|x| x.get("type") == Some(&json!("InternalIP")))
                    })
                    .and_then(|x| x.get("address").and_then(Value::as_str))
                    .unwrap_or("<none>");
                vec![
                    name(o),
                    json!(status),
                    json!(if roles.is_empty() {
                        "<none>".into()
                    } else {
                        roles.join(",")
                    }),
                    json!(age(o)),
                    json!(s(o, "status.nodeInfo.kubeletVersion")),
                    json!(ip),
                ]
            }),
        ),
        ("", "namespaces") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(move |o| vec![name(o), json!(s(o, "status.phase")), json!(age(o))]),
        ),
        ("networking.k8s.io", "networkpolicies") => (
            vec![
                col("Name", "string", 0),
                col("Pod-Selector", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    json!(label_selector_text(o.pointer("/spec/podSelector"))),
                    json!(age(o)),
                ]
            }),
        ),
        ("", "services") => (
            vec![
                col("Name", "string", 0),
                col("Type", "string", 0),
                col("Cluster-IP", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    json!(s(o, "spec.type")),
                    json!(or_none(s(o, "spec.clusterIP"))),
                    json!(age(o)),
                ]
            }),
        ),
        ("apiextensions.k8s.io", "customresourcedefinitions") => (
            vec![col("Name", "string", 0), col("Created At", "date", 0)],
            Box::new(move |o| vec![name(o), json!(s(o, "metadata.creationTimestamp"))]),
        ),
        _ if !def.printer_columns.is_empty() => {
            let mut defs = vec![col("Name", "string", 0)];
            defs.extend(
                def.printer_columns
                    .iter()
                    .map(|c| col(&c.name, &c.type_, c.priority)),
            );
            (
                defs,
                Box::new(move |o| {
                    let mut cells = vec![name(o)];
                    for c in &def.printer_columns {
                        let v = simple_json_path(o, &c.json_path);
                        cells.push(match (c.type_.as_str(), v) {
                            ("date", Some(Value::String(t))) => {
                                json!(
                                    parse_rfc3339(&t)
                                        .map(|t| human_duration(unix_now() - t))
                                        .unwrap_or(t)
                                )
                            }
                            (_, Some(v)) => v,
                            (_, None) => Value::Null,
                        });
                    }
                    cells
                }),
            )
        }
        _ => (
            vec![col("Name", "string", 0), col("Age", "string", 0)],
            Box::new(move |o| vec![name(o), json!(age(o))]),
        ),
    }
}

/// `.a.b[0].c` style JSONPath (what printer columns use in practice).
fn simple_json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj;
    let p = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    for seg in p.split('.').filter(|s| !s.is_empty()) {
        let (field, idx) = match seg.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur.clone())
}

/// A Table of `items`.
pub fn table(
    def: &ResourceDef,
    version: &str,
    include: Include,
    items: &[&Value],
    rv: u64,
    cont: Option<&str>,
) -> Value {
    let (defs, cells) = columns(def);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match include {
                Include::None => {}
                Include::Metadata => row["object"] = partial(o),
                Include::Object => row["object"] = at_version(def, o),
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    #[test]
    fn negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            Output::negotiate(kubectl, ""),
            Some(Output::Table("v1", Include::Metadata))
        );
        assert_eq!(
            Output::negotiate("application/json", "Object"),
            Some(Output::Json)
        );
        assert_eq!(Output::negotiate("", ""), Some(Output::Json));
        assert_eq!(
            Output::negotiate("application/vnd.kubernetes.protobuf", ""),
            None
        );
        assert_eq!(
            Output::negotiate("application/vnd.kubernetes.protobuf, */*", ""),
            Some(Output::Json)
        );
        assert_eq!(
            Output::negotiate(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                ""
            ),
            Some(Output::Partial)
        );
    }

    #[test]
    fn pod_row() {
        let defs = builtins();
        let pods = defs.iter().find(|d| d.plural == "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "198.19.0.2", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = table(pods, "v1", Include::Metadata, &[&pod], 7, None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "p",
                "1/2",
                "Running",
                "2",
                t["rows"][0]["cells"][4],
                "198.19.0.2",
                "n1"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn json_path() {
        let o = json!({"spec": {"a": [{"b": 3}]}});
        assert_eq!(simple_json_path(&o, ".spec.a[0].b"), Some(json!(3)));
        assert_eq!(simple_json_path(&o, ".spec.x"), None);
    }
}
