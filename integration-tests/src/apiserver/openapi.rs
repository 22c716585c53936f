//! A minimal `/openapi/v2`: one path per served resource whose PATCH
//! operation carries `x-kubernetes-group-version-kind` and a `dryRun`
//! parameter, and no schema definitions.
//!
//! That is what kubectl 1.20's `--dry-run=server` checks before sending a
//! dry-run request (it downloads the document as protobuf, gnostic's
//! `openapi_v2.Document`). Without definitions kubectl falls back to its
//! compiled-in types for strategic merge patches, and schema validation is
//! not possible (use `--validate=false`). `/openapi/v3` is not served.

use serde_json::{Map, Value, json};

use super::resources::ResourceDef;

/// Media type of the protobuf form (clients ask with `spec.v2@v1.0`; `@` is not
/// valid in a Content-Type, so the answer uses `spec.v2.v1.0` as kube-openapi does).
pub const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

fn object_path(d: &ResourceDef) -> String {
    let base = if d.group.is_empty() {
        format!("/api/{}", d.version)
    } else {
        format!("/apis/{}/{}", d.group, d.version)
    };
    if d.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
    } else {
        format!("{base}/{}/{{name}}", d.plural)
    }
}

fn gvk_yaml(d: &ResourceDef) -> String {
    format!(
        "group: \"{}\"\nkind: {}\nversion: {}\n",
        d.group, d.kind, d.version
    )
}

/// The JSON form.
pub fn v2_json(defs: &[std::sync::Arc<ResourceDef>]) -> Value {
    let mut paths = Map::new();
    for d in defs {
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let patch = json!({
            "operationId": format!("patch{}", d.kind),
            "parameters": [{"in": "query", "name": "dryRun", "type": "string", "uniqueItems": true}],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        });
        paths.insert(object_path(d), json!({"patch": patch}));
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0-margay"}, "paths": paths, "definitions": {}})
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, num: u64, b: &[u8]) {
    varint(out, (num << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn msg(num: u64, build: impl FnOnce(&mut Vec<u8>)) -> impl FnOnce(&mut Vec<u8>) {
    move |out| {
        let mut inner = Vec::new();
        build(&mut inner);
        bytes_field(out, num, &inner);
    }
}

/// The protobuf form (gnostic `openapi_v2.Document`).
pub fn v2_protobuf(defs: &[std::sync::Arc<ResourceDef>]) -> Vec<u8> {
    let mut doc = Vec::new();
    bytes_field(&mut doc, 1, b"2.0"); // swagger
    msg(2, |info| {
        bytes_field(info, 1, b"Kubernetes"); // title
        bytes_field(info, 2, b"v1.32.0-margay"); // version
    })(&mut doc);
    msg(8, |paths| {
        for d in defs {
            // Paths.path: NamedPathItem { name, value: PathItem { patch: Operation } }
            msg(2, |named| {
                bytes_field(named, 1, object_path(d).as_bytes());
                msg(2, |item| {
                    msg(8, |op| {
                        bytes_field(op, 5, format!("patch{}", d.kind).as_bytes()); // operation_id
                        // parameters: ParametersItem { parameter: Parameter { non_body:
                        //   NonBodyParameter { query: QueryParameterSubSchema { in, name, type } } } }
                        msg(8, |pi| {
                            msg(1, |p| {
                                msg(2, |nb| {
                                    msg(3, |q| {
                                        bytes_field(q, 2, b"query");
                                        bytes_field(q, 4, b"dryRun");
                                        bytes_field(q, 6, b"string");
                                    })(nb)
                                })(p)
                            })(pi)
                        })(op);
                        // vendor_extension: NamedAny { name, value: Any { yaml } }
                        for (name, yaml) in [
                            ("x-kubernetes-action", "patch\n".to_string()),
                            ("x-kubernetes-group-version-kind", gvk_yaml(d)),
                        ] {
                            msg(13, |na| {
                                bytes_field(na, 1, name.as_bytes());
                                msg(2, |any| bytes_field(any, 2, yaml.as_bytes()))(na);
                            })(op);
                        }
                    })(item)
                })(named);
            })(paths);
        }
    })(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::apiserver::resources::builtins;

    #[test]
    fn paths_and_encoding() {
        let defs: Vec<Arc<ResourceDef>> = builtins().into_iter().map(Arc::new).collect();
        let j = v2_json(&defs);
        let pods = &j["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(pods["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            j["paths"]["/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"]
                .is_object()
        );
        assert!(j["paths"]["/api/v1/nodes/{name}"].is_object());
        let pb = v2_protobuf(&defs);
        // Starts with field 1 (swagger) = "2.0".
        assert_eq!(&pb[..5], b"\x0a\x032.0");
        let needle = b"kind: NetworkPolicy";
        assert!(pb.windows(needle.len()).any(|w| w == needle));
    }
}
