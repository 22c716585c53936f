//! CustomResourceDefinitions: validation, defaults, status, and the
//! resources a CRD serves; Kubernetes' version priority order.

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::meta::{NameRule, is_dns_subdomain};
use super::resources::{PrinterColumn, ResourceDef, Special, StatusOnCreate, field_labels};
use super::schema::CrdSchema;

fn invalid(name: &str, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::invalid_field(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        name,
        field,
        value,
        why,
    )
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Validates a CRD and fills in defaults (`listKind`, `singular`) and its status.
/// Returns the resources it serves (one per served version).
pub fn crd_resources(crd: &mut Value) -> Result<Vec<ResourceDef>, ApiError> {
    let name = str_at(crd, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let group = str_at(crd, &["spec", "group"])
        .unwrap_or_default()
        .to_string();
    if group.is_empty() || !group.contains('.') || !is_dns_subdomain(&group) {
        return Err(invalid(
            &name,
            "spec.group",
            &group,
            "should be a domain with at least one dot",
        ));
    }
    let plural = str_at(crd, &["spec", "names", "plural"])
        .unwrap_or_default()
        .to_string();
    let kind = str_at(crd, &["spec", "names", "kind"])
        .unwrap_or_default()
        .to_string();
    if plural.is_empty() || !is_dns_subdomain(&plural) || plural.contains('.') {
        return Err(invalid(
            &name,
            "spec.names.plural",
            &plural,
            "must be a lowercase RFC 1123 label",
        ));
    }
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid(
            &name,
            "spec.names.kind",
            &kind,
            "must be a valid Kind name",
        ));
    }
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            &name,
            "metadata.name",
            &name,
            &format!("must be spec.names.plural+\".\"+spec.group ({plural}.{group})"),
        ));
    }
    let singular = str_at(crd, &["spec", "names", "singular"])
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(crd, &["spec", "names", "listKind"])
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let short_names = strings(crd.pointer("/spec/names/shortNames"));
    let categories = strings(crd.pointer("/spec/names/categories"));
    let scope = str_at(crd, &["spec", "scope"])
        .unwrap_or_default()
        .to_string();
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        _ => {
            return Err(invalid(
                &name,
                "spec.scope",
                &scope,
                "supported values: \"Cluster\", \"Namespaced\"",
            ));
        }
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            vec![Cause {
                reason: "FieldValueRequired",
                message: "Required value: must have exactly one version marked as storage version"
                    .into(),
                field: "spec.versions".into(),
            }],
        ));
    }
    let mut defs = Vec::new();
    let mut storage = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if vname.is_empty()
            || !vname
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(invalid(
                &name,
                &format!("spec.versions[{i}].name"),
                &vname,
                "must be a lowercase DNS label",
            ));
        }
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            storage.push(vname.clone());
        }
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .into(),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let selectable: Vec<String> = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        let status_subresource = v.pointer("/subresources/status").is_some();
        let schema = match v.pointer("/schema/openAPIV3Schema") {
            Some(s) => Some(CrdSchema::new(s.clone()).map_err(|e| {
                invalid(
                    &name,
                    &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    "object",
                    &format!("x-kubernetes-validations: {e}"),
                )
            })?),
            None => None,
        };
        let mut field_labels = field_labels(&[]);
        field_labels.extend(selectable);
        defs.push(ResourceDef {
            group: group.clone(),
            version: vname,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status_subresource,
            status_on_create: if status_subresource {
                StatusOnCreate::Drop
            } else {
                StatusOnCreate::Keep
            },
            name_rule: NameRule::Subdomain,
            field_labels,
            create_on_update: false,
            return_deleted: true,
            special: Special::None,
            printer_columns,
            crd: Some(name.clone()),
            schema,
        });
    }
    if storage.len() != 1 {
        return Err(invalid(
            &name,
            "spec.versions",
            &storage.join(","),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut accepted =
        json!({"plural": plural, "singular": singular, "kind": kind, "listKind": list_kind});
    if !short_names.is_empty() {
        accepted["shortNames"] = json!(short_names);
    }
    if !categories.is_empty() {
        accepted["categories"] = json!(categories);
    }
    if let Some(names) = crd.pointer_mut("/spec/names") {
        names["singular"] = json!(singular);
        names["listKind"] = json!(list_kind);
    }
    let now = super::meta::rfc3339(super::meta::unix_now());
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    crd["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": storage,
    });
    Ok(defs)
}

/// Kubernetes version priority: GA > beta > alpha, then by numbers, then others alphabetically.
pub fn version_priority_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(v: &str) -> (u8, u64, u64, String) {
        let parse = |s: &str| -> Option<(u64, u8, u64)> {
            let rest = s.strip_prefix('v')?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let major: u64 = rest.get(..digits)?.parse().ok()?;
            let tail = &rest[digits..];
            if tail.is_empty() {
                return Some((major, 3, 0));
            }
            let (lvl, n) = if let Some(n) = tail.strip_prefix("beta") {
                (2, n)
            } else if let Some(n) = tail.strip_prefix("alpha") {
                (1, n)
            } else {
                return None;
            };
            Some((major, lvl, n.parse().ok()?))
        };
        match parse(v) {
            Some((major, lvl, minor)) => (lvl, major, minor, String::new()),
            None => (0, 0, 0, v.to_string()),
        }
    }
    let (ka, kb) = (key(a), key(b));
    // Higher level/major/minor first; non-Kubernetes versions last, alphabetically.
    kb.0.cmp(&ka.0)
        .then(kb.1.cmp(&ka.1))
        .then(kb.2.cmp(&ka.2))
        .then(ka.3.cmp(&kb.3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec![
            "v1alpha1",
            "foo",
            "v2",
            "v1beta2",
            "v1",
            "v1beta1",
            "v10",
            "bar",
            "v11alpha2",
        ];
        v.sort_by(|a, b| version_priority_cmp(a, b));
        assert_eq!(
            v,
            [
                "v10",
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v11alpha2",
                "v1alpha1",
                "bar",
                "foo"
            ]
        );
    }

    #[test]
    fn crd_validation_and_status() {
        let mut crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": false, "storage": false}]}
        });
        let defs = crd_resources(&mut crd).unwrap();
        assert_eq!(defs.len(), 1);
        assert!(defs[0].namespaced && defs[0].status_subresource);
        assert_eq!(defs[0].list_kind, "WidgetList");
        assert_eq!(crd["status"]["acceptedNames"]["singular"], "widget");
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");

        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("w.example.com");
        assert_eq!(crd_resources(&mut bad).unwrap_err().code, 422);
        let mut bad = crd.clone();
        bad["spec"]["versions"][1]["storage"] = json!(true);
        assert_eq!(crd_resources(&mut bad).unwrap_err().code, 422);
        let mut bad = crd;
        bad["spec"]["scope"] = json!("Global");
        assert_eq!(crd_resources(&mut bad).unwrap_err().code, 422);
    }
}
