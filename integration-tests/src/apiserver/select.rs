//! Label and field selectors, parsed like `k8s.io/apimachinery` does.
//!
//! Labels: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`,
//! `a>1`, `a<1`, comma-separated (all must hold). Fields: `f=v`, `f==v`,
//! `f!=v` with `\,` `\=` `\\` escapes, on the fields a resource allows.
//!
//! Deliberately not `margay_types::Selector` (the one implementation the
//! product uses): this is the test server standing in for the API server,
//! with the server's grammar (`>`/`<`, which Margay refuses) and field
//! selectors; sharing the product's parser would make the server agree
//! with the product's bugs instead of catching them.

use serde_json::Value;

use super::object::Obj;

use super::meta::is_qualified_name;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector (empty = everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, LabelOp)>);

/// A parsed field selector (empty = everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

fn bad(sel: &str, why: &str) -> String {
    format!("unable to parse requirement: {why} (in selector {sel:?})")
}

fn check_value(sel: &str, v: &str) -> Result<(), String> {
    let b = v.as_bytes();
    let ok = b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad(sel, &format!("invalid label value: {v:?}")))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(bad(s, "unbalanced ')'"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad(s, "unbalanced '('"));
    }
    out.push(&s[start..]);
    Ok(out)
}

impl LabelSelector {
    /// Parses a selector string; the error is the message for a 400.
    pub fn parse(sel: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top(sel)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad(sel, "empty requirement"));
            }
            let (key, op) = Self::parse_one(sel, p)?;
            if !is_qualified_name(&key) {
                return Err(bad(sel, &format!("invalid label key {key:?}")));
            }
            reqs.push((key, op));
        }
        Ok(Self(reqs))
    }

    fn parse_one(sel: &str, p: &str) -> Result<(String, LabelOp), String> {
        if let Some(k) = p.strip_prefix('!') {
            return Ok((k.trim().to_string(), LabelOp::NotExists));
        }
        let key_end = p
            .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>'))
            .unwrap_or(p.len());
        let key = p[..key_end].to_string();
        let rest = p[key_end..].trim_start();
        if rest.is_empty() {
            return Ok((key, LabelOp::Exists));
        }
        let (op, val) = if let Some(v) = rest.strip_prefix("==") {
            ("=", v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            ("!=", v)
        } else if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (">", v)
        } else if let Some(v) = rest.strip_prefix('<') {
            ("<", v)
        } else if let Some(v) = rest.strip_prefix("notin") {
            ("notin", v)
        } else if let Some(v) = rest.strip_prefix("in") {
            ("in", v)
        } else {
            return Err(bad(sel, &format!("unknown operator in {p:?}")));
        };
        let val = val.trim();
        match op {
            "=" | "!=" => {
                check_value(sel, val)?;
                let v = vec![val.to_string()];
                Ok((
                    key,
                    if op == "=" {
                        LabelOp::In(v)
                    } else {
                        LabelOp::NotIn(v)
                    },
                ))
            }
            ">" | "<" => {
                let n: i64 = val.parse().map_err(|_| {
                    bad(
                        sel,
                        &format!("for 'Gt', 'Lt' operators, the value must be an integer: {val:?}"),
                    )
                })?;
                Ok((
                    key,
                    if op == ">" {
                        LabelOp::Gt(n)
                    } else {
                        LabelOp::Lt(n)
                    },
                ))
            }
            _ => {
                let inner = val
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| bad(sel, &format!("expected '(...)' after {op}")))?;
                let mut vals = Vec::new();
                for v in inner.split(',') {
                    let v = v.trim();
                    check_value(sel, v)?;
                    vals.push(v.to_string());
                }
                Ok((
                    key,
                    if op == "in" {
                        LabelOp::In(vals)
                    } else {
                        LabelOp::NotIn(vals)
                    },
                ))
            }
        }
    }

    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Does an object (its `metadata.labels`) match?
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.matches_labels(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Does a stored object match?
    pub fn matches_obj(&self, obj: &Obj) -> bool {
        self.matches_labels(|k| obj.label(k))
    }

    /// Do the labels `label(key)` returns match?
    pub fn matches_labels<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|(k, op)| {
            let v = label(k);
            match op {
                LabelOp::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
                LabelOp::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
                LabelOp::Exists => v.is_some(),
                LabelOp::NotExists => v.is_none(),
                LabelOp::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// Splits a field selector on unescaped commas and unescapes nothing yet.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next()
                && let Some(last) = out.last_mut()
            {
                last.push('\\');
                last.push(n);
            }
        } else if c == sep {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => return Err(format!("invalid escape sequence: \\{n}")),
                None => return Err("unterminated escape sequence".into()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses and checks the fields against `allowed` (the 400 message otherwise).
    pub fn parse(sel: &str, allowed: &[String]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_unescaped(sel, ',') {
            let (field, eq, value) = if let Some(i) = find_unescaped(&part, "!=") {
                (&part[..i], false, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "==") {
                (&part[..i], true, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "=") {
                (&part[..i], true, &part[i + 1..])
            } else {
                return Err(format!(
                    "invalid selector: '{sel}'; can't understand '{part}'"
                ));
            };
            let field = field.trim().to_string();
            if !allowed.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field, eq, unescape(value)?));
        }
        Ok(Self(reqs))
    }

    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `metadata.name=` if the selector pins one name.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| *eq && f == "metadata.name")
            .map(|(_, _, v)| v.as_str())
    }

    /// Does the object match? Missing fields compare as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, eq, want)| (field_value(obj, field) == *want) == *eq)
    }

    /// Does a stored object match? Name, namespace and the resource's field
    /// labels are read as stored; other fields need the parsed object.
    pub fn matches_obj(&self, obj: &Obj) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let mut parsed = None;
        self.0.iter().all(|(field, eq, want)| {
            let got = match field.as_str() {
                "metadata.name" => obj.name().to_string(),
                "metadata.namespace" => obj.namespace().to_string(),
                f => match obj.field(f) {
                    Some(v) => v.to_string(),
                    None => field_value(parsed.get_or_insert_with(|| obj.value()), f),
                },
            };
            (got == *want) == *eq
        })
    }
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The string value of a dotted field path (`spec.nodeName`); "" if absent.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_operators() {
        let p = pod(json!({"app": "web", "tier": "fe", "n": "5"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=fe", true),
            ("app=web, tier=be", false),
            ("n>4", true),
            ("n<5", false),
            ("app in (web),!missing", true),
            ("app=", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&p), want, "{sel}");
        }
    }

    #[test]
    fn label_errors() {
        for sel in ["app=web=x", "a in x", "a in (x", "=x", "app=-x", "n>x", ","] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn fields() {
        let allowed: Vec<String> = [
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
            "spec.hostNetwork",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = pod(json!({}));
        for (sel, want) in [
            ("spec.nodeName=n1", true),
            ("spec.nodeName==n1,status.phase!=Failed", true),
            ("spec.nodeName!=n1", false),
            ("metadata.namespace=ns,metadata.name=p", true),
            ("spec.hostNetwork=true", true),
            ("status.phase=", false),
        ] {
            assert_eq!(
                FieldSelector::parse(sel, &allowed).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
        assert_eq!(
            FieldSelector::parse("metadata.name=a\\,b", &allowed)
                .unwrap()
                .pinned_name(),
            Some("a,b")
        );
        assert!(
            FieldSelector::parse("spec.foo=x", &allowed)
                .unwrap_err()
                .contains("not supported")
        );
        assert!(FieldSelector::parse("spec.nodeName", &allowed).is_err());
    }
}
