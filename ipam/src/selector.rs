//! Node label selectors for pools, in Kubernetes' set-based syntax
//! (`kubectl -l`): comma-separated requirements, all of which must hold.
//!
//! ```text
//! zone=a, rack!=r1, tier in (web, api), env notin (dev), gpu, !spot
//! ```
//! The empty string and `all()` select every node.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest selector text accepted.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// A parse error with the offending text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node selector at {pos}: {reason}")]
pub struct SelectorError {
    /// Byte position in the selector.
    pub pos: usize,
    /// What was expected.
    pub reason: String,
}

/// One requirement on a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key` (label present).
    Exists(String),
    /// `!key`.
    NotExists(String),
    /// `key=value`, `key==value`, `key in (a, b)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a, b)` (also true when the label is absent).
    NotIn(String, Vec<String>),
}

/// A parsed selector; an empty list of requirements matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    /// All must hold.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether a node with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("all()");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
                Requirement::In(k, v) => write!(f, "{k} in ({})", v.join(", "))?,
                Requirement::NotIn(k, v) => write!(f, "{k} notin ({})", v.join(", "))?,
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
        SelectorError {
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
    fn value_list(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("(") {
            return Err(self.err("expected '('"));
        }
        let mut out = Vec::new();
        loop {
            out.push(self.word()?.to_string());
            if self.eat(")") {
                return Ok(out);
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
            return Err(SelectorError {
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
        loop {
            let req = if lx.eat("!") {
                Requirement::NotExists(lx.word()?.to_string())
            } else {
                let key = lx.word()?.to_string();
                if lx.eat("!=") {
                    Requirement::NotIn(key, vec![lx.word()?.to_string()])
                } else if lx.eat("==") || lx.eat("=") {
                    Requirement::In(key, vec![lx.word()?.to_string()])
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
        Ok(Selector { requirements: reqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_set_based_syntax() {
        let sel: Selector = "zone=a, tier in (web, api), env notin (dev), gpu, !spot, rack!=r1"
            .parse()
            .unwrap();
        let good = labels(&[("zone", "a"), ("tier", "api"), ("gpu", "")]);
        assert!(sel.matches(&good));
        let mut bad = good.clone();
        bad.insert("spot".into(), "true".into());
        assert!(!sel.matches(&bad));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!sel.matches(&bad));
        let mut bad = good.clone();
        bad.insert("rack".into(), "r1".into());
        assert!(!sel.matches(&bad));
        assert!(!sel.matches(&labels(&[("zone", "b"), ("tier", "api"), ("gpu", "")])));
    }

    #[test]
    fn empty_and_all_match_everything() {
        for s in ["", "  ", "all()"] {
            let sel: Selector = s.parse().unwrap();
            assert!(sel.matches(&BTreeMap::new()));
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for s in [
            "zone=",
            "zone in a",
            "zone in (a",
            "zone ~ a",
            "=a",
            "a b",
            ",",
            "a,,b",
        ] {
            assert!(s.parse::<Selector>().is_err(), "{s:?} should fail");
        }
        assert!(
            "a".repeat(MAX_SELECTOR_LEN + 1)
                .parse::<Selector>()
                .is_err()
        );
        // Display round-trips.
        let sel: Selector = "kubernetes.io/os=linux,!spot".parse().unwrap();
        assert_eq!(sel.to_string().parse::<Selector>().unwrap(), sel);
    }
}
