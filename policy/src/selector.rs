//! Compiled label selectors (`matchLabels` + `matchExpressions`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::Labels;

/// One requirement; all of a selector's requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
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
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Compiles a Kubernetes `LabelSelector`.
    pub fn compile(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut reqs = BTreeSet::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.insert(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            if e.key.is_empty() {
                return Err(SelectorError::EmptyKey { index });
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let key = e.key.clone();
            let need_values = |r: fn(String, BTreeSet<String>) -> Requirement| {
                if values.is_empty() {
                    Err(SelectorError::MissingValues {
                        index,
                        key: key.clone(),
                        operator: e.operator.clone(),
                    })
                } else {
                    Ok(r(key.clone(), values.clone()))
                }
            };
            let no_values = |r: fn(String) -> Requirement| {
                if values.is_empty() {
                    Ok(r(key.clone()))
                } else {
                    Err(SelectorError::UnexpectedValues {
                        index,
                        key: key.clone(),
                        operator: e.operator.clone(),
                    })
                }
            };
            let req = match e.operator.as_str() {
                "In" => need_values(Requirement::In)?,
                "NotIn" => need_values(Requirement::NotIn)?,
                "Exists" => no_values(Requirement::Exists)?,
                "DoesNotExist" => no_values(Requirement::DoesNotExist)?,
                other => {
                    return Err(SelectorError::BadOperator {
                        index,
                        key: e.key.clone(),
                        operator: other.to_string(),
                    });
                }
            };
            reqs.insert(req);
        }
        Ok(Selector {
            reqs: reqs.into_iter().collect(),
        })
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// A canonical, unambiguous text form (used for content-addressed names).
    pub fn canonical(&self) -> String {
        let mut s = String::from("{");
        for r in &self.reqs {
            let (op, k, vs): (&str, &String, Option<&BTreeSet<String>>) = match r {
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if me.is_empty() { None } else { Some(me) },
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::compile(&LabelSelector::default()).unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_all_must_hold() {
        let s = Selector::compile(&sel(&[("a", "1"), ("b", "2")], vec![])).unwrap();
        assert!(s.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "3")])));
        assert!(!s.matches(&labels(&[("a", "1")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "3")])));
    }

    #[test]
    fn operators() {
        let l = labels(&[("env", "prod"), ("tier", "web")]);
        let none = labels(&[]);
        let t = |e, l: &Labels| Selector::compile(&sel(&[], vec![e])).unwrap().matches(l);
        assert!(t(expr("env", "In", &["prod", "dev"]), &l));
        assert!(!t(expr("env", "In", &["dev"]), &l));
        assert!(!t(expr("env", "In", &["prod"]), &none));
        assert!(t(expr("env", "NotIn", &["dev"]), &l));
        assert!(!t(expr("env", "NotIn", &["prod"]), &l));
        assert!(
            t(expr("env", "NotIn", &["prod"]), &none),
            "NotIn matches absent key"
        );
        assert!(t(expr("tier", "Exists", &[]), &l));
        assert!(!t(expr("tier", "Exists", &[]), &none));
        assert!(t(expr("tier", "DoesNotExist", &[]), &none));
        assert!(!t(expr("tier", "DoesNotExist", &[]), &l));
    }

    #[test]
    fn invalid_expressions_are_errors() {
        assert!(matches!(
            Selector::compile(&sel(&[], vec![expr("a", "Equals", &["b"])])),
            Err(SelectorError::BadOperator { .. })
        ));
        assert!(matches!(
            Selector::compile(&sel(&[], vec![expr("a", "In", &[])])),
            Err(SelectorError::MissingValues { .. })
        ));
        assert!(matches!(
            Selector::compile(&sel(&[], vec![expr("a", "Exists", &["x"])])),
            Err(SelectorError::UnexpectedValues { .. })
        ));
        assert!(matches!(
            Selector::compile(&sel(&[], vec![expr("", "Exists", &[])])),
            Err(SelectorError::EmptyKey { .. })
        ));
    }

    #[test]
    fn canonical_is_order_independent() {
        let a = Selector::compile(&sel(
            &[("a", "1")],
            vec![expr("b", "In", &["2", "3"]), expr("c", "Exists", &[])],
        ))
        .unwrap();
        let b = Selector::compile(&sel(
            &[],
            vec![
                expr("c", "Exists", &[]),
                expr("b", "In", &["3", "2"]),
                expr("a", "In", &["1"]),
            ],
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), Selector::everything().canonical());
    }
}
