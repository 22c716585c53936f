//! A stored object, kept compact: its JSON text plus the few fields the
//! server reads on every list and watch (name, namespace, labels,
//! apiVersion, and the values of its resource's other field labels, as
//! the real watch cache keeps them: a field selector on `spec.nodeName` or
//! a CRD's selectable field over 150,000 objects must not parse each). A `serde_json::Value` tree costs about eleven times its JSON
//! text (a 3.4 KB Pod is 37 KB as a `Value`: every small map is a full
//! B-tree node), so 150,000 Pods held as values took 5.6 GB; as text they
//! take 0.5 GB. Writes, GETs and everything else that needs the tree parse
//! it on demand ([`Obj::value`]); lists and watches send the text as it is.
//!
//! The few kinds the server itself reads on every request (RBAC roles and
//! bindings, ServiceAccounts for tokens, CRDs) keep their parsed tree too
//! ([`Obj::parsed`]).

use std::sync::Arc;

use serde_json::Value;

use super::meta::meta_str;
use super::resources::GroupResource;

#[derive(Debug)]
struct Inner {
    json: Box<[u8]>,
    name: Box<str>,
    namespace: Box<str>,
    api_version: Box<str>,
    labels: Box<[(Box<str>, Box<str>)]>,
    /// Field label → value, for the resource's field labels other than
    /// name and namespace (missing fields as "").
    fields: Box<[(Box<str>, Box<str>)]>,
    parsed: Option<Arc<Value>>,
}

/// A stored object (cheap to clone: shared).
#[derive(Debug, Clone)]
pub struct Obj(Arc<Inner>);

/// Whether objects of `gr` keep their parsed tree (the server reads them
/// on every request).
pub fn keeps_parsed(gr: &GroupResource) -> bool {
    gr.group == "rbac.authorization.k8s.io"
        || gr.group == "apiextensions.k8s.io"
        || (gr.group.is_empty() && gr.plural == "serviceaccounts")
}

impl Obj {
    /// Stores `v` (keeping its tree when `keep_parsed`), with the values of
    /// `field_labels` (those of its resource) at hand.
    pub fn new(v: Arc<Value>, keep_parsed: bool, field_labels: &[String]) -> Obj {
        let fields = field_labels
            .iter()
            .filter(|f| !matches!(f.as_str(), "metadata.name" | "metadata.namespace"))
            .map(|f| {
                (
                    Box::from(f.as_str()),
                    Box::from(super::select::field_value(&v, f).as_str()),
                )
            })
            .collect();
        let s = |k: &str| Box::<str>::from(meta_str(&v, k).unwrap_or_default());
        let labels = v
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, x)| Some((Box::from(k.as_str()), Box::from(x.as_str()?))))
                    .collect()
            })
            .unwrap_or_default();
        Obj(Arc::new(Inner {
            // A Value always serializes.
            json: serde_json::to_vec(&*v)
                .unwrap_or_default()
                .into_boxed_slice(),
            name: s("name"),
            namespace: s("namespace"),
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            labels,
            fields,
            parsed: keep_parsed.then_some(v),
        }))
    }

    /// The value of field label `f`, if it was taken when the object was
    /// stored (None: read it from [`Obj::value`]).
    pub fn field(&self, f: &str) -> Option<&str> {
        self.0
            .fields
            .iter()
            .find(|(k, _)| &**k == f)
            .map(|(_, v)| &**v)
    }

    /// The object as a JSON tree (parsed now unless kept).
    pub fn value(&self) -> Arc<Value> {
        match &self.0.parsed {
            Some(v) => v.clone(),
            // It was serialized from a Value: it parses.
            None => Arc::new(serde_json::from_slice(&self.0.json).unwrap_or(Value::Null)),
        }
    }

    /// The kept tree, for the kinds that keep one ([`keeps_parsed`]).
    pub fn parsed(&self) -> Option<&Value> {
        self.0.parsed.as_deref()
    }

    /// The JSON text.
    pub fn json(&self) -> &[u8] {
        &self.0.json
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// `metadata.namespace` ("" if none).
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        &self.0.api_version
    }

    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.0
            .labels
            .iter()
            .find(|(key, _)| &**key == k)
            .map(|(_, v)| &**v)
    }

    /// Whether both are the same stored object (not a copy).
    pub fn ptr_eq(a: &Obj, b: &Obj) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_text_and_the_fields_selectors_need() {
        let v = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "n": "1"}},
            "spec": {"nodeName": "n1"}});
        let o = Obj::new(Arc::new(v.clone()), false, &[]);
        assert_eq!(*o.value(), v);
        assert_eq!(serde_json::from_slice::<Value>(o.json()).ok(), Some(v));
        assert_eq!(
            (o.name(), o.namespace(), o.api_version()),
            ("p", "ns", "v1")
        );
        assert_eq!(
            (o.label("app"), o.label("n"), o.label("x")),
            (Some("web"), Some("1"), None)
        );
        assert!(o.parsed().is_none());
        let kept = Obj::new(Arc::new(json!({"metadata": {"name": "r"}})), true, &[]);
        assert_eq!(
            kept.parsed().and_then(|p| p.pointer("/metadata/name")),
            Some(&json!("r"))
        );
        assert!(keeps_parsed(&GroupResource {
            group: "rbac.authorization.k8s.io".into(),
            plural: "roles".into()
        }));
        assert!(!keeps_parsed(&GroupResource {
            group: String::new(),
            plural: "pods".into()
        }));
    }

    #[test]
    fn field_label_values_are_taken_when_stored() {
        let labels: Vec<String> = ["metadata.name", "spec.node", "spec.missing"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Obj::new(
            Arc::new(json!({"metadata": {"name": "e"}, "spec": {"node": "n1"}})),
            false,
            &labels,
        );
        assert_eq!(o.field("spec.node"), Some("n1"));
        assert_eq!(
            o.field("spec.missing"),
            Some(""),
            "missing compares as empty"
        );
        assert_eq!(
            o.field("metadata.name"),
            None,
            "read from the name as stored"
        );
        assert_eq!(
            o.field("spec.other"),
            None,
            "not a field label: parsed on demand"
        );
    }
}
