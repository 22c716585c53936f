//! Kubernetes label selectors, one implementation for the workspace.
//!
//! A [`Selector`] is a set of [`Requirement`]s that must all hold. It comes
//! from a `metav1.LabelSelector` ([`Selector::compile`], feature `k8s`:
//! validated, typed errors) or from the set-based text form of `kubectl -l`
//! ([`str::parse`]):
//!
//! ```text
//! zone=a, rack!=r1, tier in (web, api), env notin (dev), gpu, !spot
//! ```
//!
//! The empty text, `all()` and the empty LabelSelector `{}` select
//! everything. [`Display`](fmt::Display) writes the text form back
//! (`all()` for the empty selector). Requirements are kept sorted and
//! deduplicated, so equal selectors compare, order and hash equal however
//! they were written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Labels a selector can be matched against: a [`Labels`] map, or any
/// other form of a key → value map (the policy engine's compact pod
/// labels). A key has at most one value.
pub trait LabelLookup {
    /// The value of label `key`, if the object has it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Longest selector text accepted by the parser.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// The values of an `in` / `notin` requirement: sorted, without repeats,
/// in one allocation. Most requirements have one value (`matchLabels`);
/// a `BTreeSet` would be a node sized for eleven (~0.3 KB each, tens of
/// thousands of them with 10k policies: docs/scale.md). Compares, orders,
/// hashes and prints (`{"a", "b"}`, part of [`Selector::canonical`]) as
/// the `BTreeSet` of the same values did.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Values(Box<[String]>);

impl Values {
    /// Whether `v` is one of them.
    pub fn contains(&self, v: &str) -> bool {
        self.0.binary_search_by(|x| x.as_str().cmp(v)).is_ok()
    }

    /// In order.
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<String> for Values {
    fn from_iter<I: IntoIterator<Item = String>>(it: I) -> Self {
        let mut v: Vec<String> = it.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Values(v.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a Values {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

/// One requirement on a label. The variant order is part of the canonical
/// form ([`Selector::canonical`]): do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// `key=value`, `key==value`, `key in (a, b)`; false when absent.
    In(String, Values),
    /// `key!=value`, `key notin (a, b)`; true when the label is absent.
    NotIn(String, Values),
    /// `key`: the label is present.
    Exists(String),
    /// `!key`: the label is absent.
    DoesNotExist(String),
}

impl Requirement {
    fn holds<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Requirement::In(k, vs) => labels.label(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.label(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::DoesNotExist(k) => labels.label(k).is_none(),
        }
    }
}

/// A validated label selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Selector {
    /// Sorted and deduplicated, so equal selectors compare (and hash) equal.
    reqs: Vec<Requirement>,
}

/// Why a selector is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}] key {key:?}: unknown operator {operator:?}")]
    BadOperator {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}] key {key:?}: operator {operator} needs at least one value")]
    MissingValues {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}] key {key:?}: operator {operator} takes no values")]
    UnexpectedValues {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}]: empty key")]
    EmptyKey { index: usize },
    /// The text form does not parse.
    #[error("invalid label selector at byte {pos}: {reason}")]
    Syntax {
        /// Byte position in the text.
        pos: usize,
        /// What was expected.
        reason: String,
    },
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// A selector of these requirements (sorted and deduplicated).
    pub fn from_requirements(reqs: impl IntoIterator<Item = Requirement>) -> Self {
        let set: BTreeSet<Requirement> = reqs.into_iter().collect();
        Selector {
            reqs: set.into_iter().collect(),
        }
    }

    /// Its requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    /// Whether it selects everything.
    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        self.reqs.iter().all(|r| r.holds(labels))
    }

    /// A canonical, unambiguous text form (used for content-addressed
    /// names: changing it renames the policy sets built from selectors).
    pub fn canonical(&self) -> String {
        let mut s = String::from("{");
        for r in &self.reqs {
            let (op, k, vs): (&str, &String, Option<&Values>) = match r {
                Requirement::In(k, v) => ("in", k, Some(v)),
                Requirement::NotIn(k, v) => ("notin", k, Some(v)),
                Requirement::Exists(k) => ("exists", k, None),
                Requirement::DoesNotExist(k) => ("!exists", k, None),
            };
            let _ = write!(s, "{op} {k:?}");
            if let Some(vs) = vs {
                let _ = write!(s, " {vs:?}");
            }
            s.push(';');
        }
        s.push('}');
        s
    }
}

#[cfg(feature = "k8s")]
mod k8s {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::{Requirement, Selector, SelectorError, Values};

    impl Selector {
        /// Compiles a Kubernetes `LabelSelector`, checking what the API
        /// server checks for built-in types (operators, values, keys).
        pub fn compile(sel: &LabelSelector) -> Result<Selector, SelectorError> {
            let mut reqs = Vec::new();
            for (k, v) in sel.match_labels.iter().flatten() {
                reqs.push(Requirement::In(k.clone(), Values::from_iter([v.clone()])));
            }
            for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
                if e.key.is_empty() {
                    return Err(SelectorError::EmptyKey { index });
                }
                let values: Values = e.values.iter().flatten().cloned().collect();
                let (key, operator) = (e.key.clone(), e.operator.clone());
                reqs.push(match e.operator.as_str() {
                    "In" | "NotIn" if values.is_empty() => {
                        return Err(SelectorError::MissingValues {
                            index,
                            key,
                            operator,
                        });
                    }
                    "Exists" | "DoesNotExist" if !values.is_empty() => {
                        return Err(SelectorError::UnexpectedValues {
                            index,
                            key,
                            operator,
                        });
                    }
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    _ => {
                        return Err(SelectorError::BadOperator {
                            index,
                            key,
                            operator,
                        });
                    }
                });
            }
            Ok(Selector::from_requirements(reqs))
        }

        /// [`Selector::compile`] of an optional selector: absent selects
        /// everything.
        pub fn compile_opt(sel: Option<&LabelSelector>) -> Result<Selector, SelectorError> {
            sel.map_or_else(|| Ok(Selector::everything()), Selector::compile)
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("all()");
        }
        let list = |vs: &Values| vs.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
                Requirement::In(k, v) => write!(f, "{k} in ({})", list(v))?,
                Requirement::NotIn(k, v) => write!(f, "{k} notin ({})", list(v))?,
            }
        }
        Ok(())
    }
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

impl<'a> Lexer<'a> {
    fn err(&self, reason: impl Into<String>) -> SelectorError {
        SelectorError::Syntax {
            pos: self.pos,
            reason: reason.into(),
        }
    }
    fn skip_ws(&mut self) {
        let rest = &self.s[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }
    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.s[self.pos..].chars().next()
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    fn word(&mut self) -> Result<&'a str, SelectorError> {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        let n = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
        if n == 0 {
            return Err(self.err("expected a label key or value"));
        }
        self.pos += n;
        Ok(&rest[..n])
    }
    fn value_list(&mut self) -> Result<Values, SelectorError> {
        if !self.eat("(") {
            return Err(self.err("expected '('"));
        }
        let mut out = Vec::new();
        loop {
            out.push(self.word()?.to_string());
            if self.eat(")") {
                return Ok(out.into_iter().collect());
            }
            if !self.eat(",") {
                return Err(self.err("expected ',' or ')'"));
            }
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::Syntax {
                pos: MAX_SELECTOR_LEN,
                reason: format!("longer than {MAX_SELECTOR_LEN} bytes"),
            });
        }
        let t = s.trim();
        if t.is_empty() || t == "all()" {
            return Ok(Selector::default());
        }
        let mut lx = Lexer { s, pos: 0 };
        let mut reqs = Vec::new();
        let one = |v: &str| Values::from_iter([v.to_string()]);
        loop {
            let req = if lx.eat("!") {
                Requirement::DoesNotExist(lx.word()?.to_string())
            } else {
                let key = lx.word()?.to_string();
                if lx.eat("!=") {
                    Requirement::NotIn(key, one(lx.word()?))
                } else if lx.eat("==") || lx.eat("=") {
                    Requirement::In(key, one(lx.word()?))
                } else if matches!(lx.peek(), Some(',') | None) {
                    Requirement::Exists(key)
                } else {
                    let op = lx.word()?;
                    match op {
                        "in" => Requirement::In(key, lx.value_list()?),
                        "notin" => Requirement::NotIn(key, lx.value_list()?),
                        _ => return Err(lx.err(format!("unknown operator {op:?}"))),
                    }
                }
            };
            reqs.push(req);
            match lx.peek() {
                None => break,
                Some(',') => {
                    lx.eat(",");
                }
                Some(_) => return Err(lx.err("expected ','")),
            }
        }
        Ok(Selector::from_requirements(reqs))
    }
}
