//! Custom resources against their CRD's structural schema, in the order the
//! real API server applies it: prune unknown fields (or refuse them with
//! `fieldValidation=Strict`), drop nulls the schema does not allow, apply
//! `default`s, validate (types, required, enum, bounds, lengths, `pattern`,
//! the formats the server knows), then evaluate `x-kubernetes-validations`
//! CEL rules with the Kubernetes CEL libraries (CIDR, IP, quantity, ...).
//!
//! Messages follow the real server's, e.g.
//! `spec.blockSize: Invalid value: 40: spec.blockSize in body should be less
//! than or equal to 32`, so that a test reading them reads what an operator
//! reads.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use super::error::{ApiError, Cause};
use super::resources::ResourceDef;

/// What to do with fields the schema does not define (the `fieldValidation`
/// query parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently (the default for clients that do not ask).
    #[default]
    Ignore,
    /// Drop them (the real server also sends a Warning header).
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter's value.
    pub fn parse(v: &str) -> Result<Self, ApiError> {
        match v {
            "" | "Ignore" => Ok(Self::Ignore),
            "Warn" => Ok(Self::Warn),
            "Strict" => Ok(Self::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// A CRD version's schema, ready to validate objects.
#[derive(Clone, Debug)]
pub struct CrdSchema {
    /// `openAPIV3Schema`.
    pub schema: Arc<Value>,
    /// Whether any node carries `x-kubernetes-validations` (else CEL is skipped).
    has_rules: bool,
}

impl PartialEq for CrdSchema {
    fn eq(&self, other: &Self) -> bool {
        self.schema == other.schema
    }
}

fn has_rules(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

fn validator() -> &'static kube_cel::Validator {
    static V: OnceLock<kube_cel::Validator> = OnceLock::new();
    V.get_or_init(kube_cel::Validator::new)
}

impl CrdSchema {
    /// Takes a CRD version's schema; rules that do not compile are an error
    /// (the real server refuses such a CRD).
    pub fn new(schema: Value) -> Result<Self, String> {
        let has_rules = has_rules(&schema);
        if has_rules {
            let compiled = kube_cel::compile_schema(&schema);
            if let Some(e) = compiled.compilation_errors().first() {
                return Err(format!("compilation failed: {e}"));
            }
        }
        Ok(CrdSchema {
            schema: Arc::new(schema),
            has_rules,
        })
    }

    /// Prunes, defaults and validates `obj` (the whole object) in place.
    pub fn apply(
        &self,
        def: &ResourceDef,
        obj: &mut Value,
        old: Option<&Value>,
        fv: FieldValidation,
    ) -> Result<(), ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut unknown = Vec::new();
        prune(&self.schema, obj, "", true, &mut unknown);
        if fv == FieldValidation::Strict && !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {list}"
            )));
        }
        default(&self.schema, obj);
        let mut causes = Vec::new();
        check(&self.schema, obj, "", true, &mut causes);
        if causes.is_empty() && self.has_rules {
            let old = old.cloned().map(|mut o| {
                default(&self.schema, &mut o);
                o
            });
            if let Err(errs) = validator().validate(&self.schema, obj, old.as_ref()) {
                for e in errs.iter() {
                    let field = e.field_path.trim_start_matches('.').to_string();
                    let value = field_value(obj, &field);
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        message: format!("Invalid value: {value}: {}", e.message),
                        field,
                    });
                }
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&def.group, &def.kind, &name, causes))
        }
    }
}

/// The value at a dotted path, rendered as the real server renders it in
/// messages (`"object"` for objects and arrays).
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for p in path.split('.').filter(|p| !p.is_empty()) {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return "\"null\"".into(),
        }
    }
    render(cur)
}

fn render(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn flag(schema: &Value, k: &str) -> bool {
    schema.get(k).and_then(Value::as_bool) == Some(true)
}

/// Drops fields the schema does not define, and nulls it does not allow.
fn prune(schema: &Value, v: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match sub {
                    Some(sub) => {
                        if m.get(&k).is_some_and(Value::is_null) && !flag(sub, "nullable") {
                            m.remove(&k);
                        } else if let Some(child) = m.get_mut(&k) {
                            prune(sub, child, &join(path, &k), false, unknown);
                        }
                    }
                    None if preserve => {}
                    None => {
                        m.remove(&k);
                        unknown.push(join(path, &k));
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter_mut().enumerate() {
                    prune(items, x, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in `default`s of absent properties of present objects.
fn default(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if !m.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        default(sub, child);
                    }
                }
            } else if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in m.values_mut() {
                    default(add, child);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for x in a {
                    default(items, x);
                }
            }
        }
        _ => {}
    }
}

fn cause(causes: &mut Vec<Cause>, reason: &'static str, field: &str, message: String) {
    causes.push(Cause {
        reason,
        message,
        field: field.to_string(),
    });
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The formats the real server checks (others are accepted as strings).
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "cidr" => s.parse::<ipnetwork::IpNetwork>().is_ok() && s.contains('/'),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        _ => true,
    }
}

fn check(schema: &Value, v: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if v.is_null() {
        if !flag(schema, "nullable") && !root {
            cause(
                causes,
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"null\": {shown} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            );
        }
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(v);
        let fits = want == got
            || (want == "number" && got == "integer")
            || (int_or_string && matches!(got, "integer" | "string"));
        if !fits {
            cause(
                causes,
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: {}: {shown} in body must be of type {want}: \"{got}\"",
                    render(v)
                ),
            );
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list = allowed
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        cause(
            causes,
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {v}: supported values: {list}"),
        );
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let excl = flag(schema, "exclusiveMaximum");
                if x > max || (excl && x == max) {
                    let rel = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    cause(
                        causes,
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {v}: {shown} in body should be {rel} {max}"),
                    );
                }
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let excl = flag(schema, "exclusiveMinimum");
                if x < min || (excl && x == min) {
                    let rel = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    cause(
                        causes,
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {v}: {shown} in body should be {rel} {min}"),
                    );
                }
            }
            let bounds = match schema.get("format").and_then(Value::as_str) {
                Some("int32") => Some((i32::MIN as f64, i32::MAX as f64)),
                _ => None,
            };
            if let Some((lo, hi)) = bounds
                && (x < lo || x > hi)
            {
                cause(
                    causes,
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {v}: {shown} in body must be of type int32"),
                );
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                cause(
                    causes,
                    "FieldValueTooLong",
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                );
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                cause(
                    causes,
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {v}: {shown} in body should be at least {min} chars long"
                    ),
                );
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(s) => cause(
                        causes,
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {v}: {shown} in body should match '{p}'"),
                    ),
                    Ok(_) => {}
                    Err(e) => cause(
                        causes,
                        "FieldValueInvalid",
                        path,
                        format!("the schema's pattern {p:?} does not compile: {e}"),
                    ),
                }
            }
            if let Some(f) = schema.get("format").and_then(Value::as_str)
                && !format_ok(f, s)
            {
                cause(
                    causes,
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {v}: {shown} in body must be of type {f}: {v}"),
                );
            }
        }
        Value::Array(a) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && a.len() as u64 > max
            {
                cause(
                    causes,
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {}: must have at most {max} items", a.len()),
                );
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (a.len() as u64) < min
            {
                cause(
                    causes,
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {}: {shown} in body should have at least {min} items",
                        a.len()
                    ),
                );
            }
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter().enumerate() {
                    check(items, x, &format!("{path}[{i}]"), false, causes);
                }
            }
        }
        Value::Object(m) => check_object(schema, m, path, root, causes),
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_object(
    schema: &Value,
    m: &Map<String, Value>,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                cause(
                    causes,
                    "FieldValueRequired",
                    &join(path, r),
                    "Required value".into(),
                );
            }
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, x) in m {
        if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
            check(sub, x, &join(path, k), false, causes);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn def() -> ResourceDef {
        let crd = json!({
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        let mut crd = crd;
        super::super::crd::crd_resources(&mut crd)
            .expect("crd")
            .remove(0)
    }

    fn schema() -> CrdSchema {
        CrdSchema::new(json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cidr"],
                    "properties": {
                        "cidr": {"type": "string", "format": "cidr", "maxLength": 43},
                        "size": {"type": "integer", "minimum": 0, "maximum": 128},
                        "mode": {"type": "string", "enum": ["Never", "Always"], "default": "Never"},
                        "name": {"type": "string", "pattern": "^[a-z]+$"},
                        "opt": {"type": "boolean", "nullable": true},
                        "flag": {"type": "boolean"},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }
            },
            "x-kubernetes-validations": [{
                "rule": "!has(self.spec.size) || self.spec.size <= (cidr(self.spec.cidr).ip().family() == 4 ? 32 : 128)",
                "message": "size too large for the family",
                "fieldPath": ".spec.size"
            }]
        }))
        .expect("schema compiles")
    }

    fn apply(obj: Value, fv: FieldValidation) -> Result<Value, String> {
        let mut obj = obj;
        schema()
            .apply(&def(), &mut obj, None, fv)
            .map(|()| obj)
            .map_err(|e| e.message)
    }

    fn thing(spec: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn prunes_unknown_fields_defaults_and_drops_disallowed_nulls() {
        let out = apply(
            thing(
                json!({"cidr": "198.19.0.0/16", "typo": 1, "flag": null, "opt": null,
                "free": {"anything": [1]}}),
            ),
            FieldValidation::Ignore,
        )
        .expect("valid");
        let spec = &out["spec"];
        assert!(spec.get("typo").is_none(), "{out}");
        assert!(spec.get("flag").is_none(), "{out}");
        assert!(spec["opt"].is_null() && spec.get("opt").is_some(), "{out}");
        assert_eq!(spec["mode"], "Never");
        assert_eq!(spec["free"]["anything"], json!([1]));
        assert_eq!(out["metadata"]["name"], "t");
        let err = apply(
            thing(json!({"cidr": "198.19.0.0/16", "typo": 1})),
            FieldValidation::Strict,
        )
        .expect_err("strict");
        assert!(err.contains("unknown field \"spec.typo\""), "{err}");
    }

    #[test]
    fn rejects_types_bounds_enums_patterns_formats_and_missing_fields() {
        for (spec, want) in [
            (json!({}), "spec.cidr: Required value"),
            (
                json!({"cidr": "198.19.0.0/16", "size": "x"}),
                "spec.size in body must be of type integer",
            ),
            (
                json!({"cidr": "198.19.0.0/16", "size": 300}),
                "spec.size in body should be less than or equal to 128",
            ),
            (
                json!({"cidr": "198.19.0.0/16", "mode": "Sometimes"}),
                "Unsupported value: \"Sometimes\"",
            ),
            (
                json!({"cidr": "198.19.0.0/16", "name": "A1"}),
                "should match '^[a-z]+$'",
            ),
            (
                json!({"cidr": "198.19.0.300/16"}),
                "spec.cidr in body must be of type cidr",
            ),
            (
                json!({"cidr": "198.19.0.0/16", "size": 40}),
                "spec.size: Invalid value: 40: size too large for the family",
            ),
        ] {
            let err = apply(thing(spec.clone()), FieldValidation::Ignore)
                .expect_err(&format!("{spec} must be refused"));
            assert!(err.contains(want), "{spec}: {err}");
        }
        apply(
            thing(json!({"cidr": "2001:db8::/48", "size": 122})),
            FieldValidation::Ignore,
        )
        .expect("a v6 block size within 128 is fine");
    }

    #[test]
    fn a_rule_that_does_not_compile_is_refused() {
        let err = CrdSchema::new(json!({"type": "object",
            "x-kubernetes-validations": [{"rule": "self.spec.size <="}]}))
        .expect_err("bad rule");
        assert!(err.contains("compilation failed"), "{err}");
    }
}
