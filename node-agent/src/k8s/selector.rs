//! Kubernetes label selectors (`metav1.LabelSelector`) as the agent uses
//! them: matched against labels ([`selects`]) and written in the set-based
//! text form the `ipam` crate's parser reads ([`selector_string`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Whether a LabelSelector (absent: everything) matches `labels`; unknown
/// operators match nothing (fail closed).
pub fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return true };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in sel.match_expressions.iter().flatten() {
        let vals = r.values.clone().unwrap_or_default();
        let have = labels.get(&r.key);
        let ok = match r.operator.as_str() {
            "In" => have.is_some_and(|h| vals.contains(h)),
            "NotIn" => have.is_none_or(|h| !vals.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false, // unknown operators select nothing (fail closed)
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A LabelSelector in the set-based text form (`a=b, c in (d, e), !f`) the
/// IPAM selector parser reads.
pub fn selector_string(sel: &LabelSelector) -> Result<String, String> {
    let mut parts = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        parts.push(format!("{k}={v}"));
    }
    for LabelSelectorRequirement {
        key,
        operator,
        values,
    } in sel.match_expressions.iter().flatten()
    {
        let vals = values.clone().unwrap_or_default();
        parts.push(match operator.as_str() {
            "In" | "NotIn" if vals.is_empty() => {
                return Err(format!("nodeSelector: {operator} on {key:?} needs values"));
            }
            "In" => format!("{key} in ({})", vals.join(", ")),
            "NotIn" => format!("{key} notin ({})", vals.join(", ")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            other => return Err(format!("nodeSelector: unknown operator {other:?}")),
        });
    }
    Ok(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_become_set_based_text_the_ipam_parser_reads() {
        let sel = LabelSelector {
            match_labels: Some([("zone".to_string(), "a".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                },
                LabelSelectorRequirement {
                    key: "spot".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "gpu".into(),
                    operator: "Exists".into(),
                    values: None,
                },
            ]),
        };
        let text = selector_string(&sel).expect("valid");
        assert_eq!(text, "zone=a, tier in (web, api), !spot, gpu");
        let parsed: ipam::selector::Selector = text.parse().expect("ipam parses it");
        let labels = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert!(parsed.matches(&labels(&[("zone", "a"), ("tier", "api"), ("gpu", "")])));
        assert!(!parsed.matches(&labels(&[
            ("zone", "a"),
            ("tier", "api"),
            ("gpu", ""),
            ("spot", "1")
        ])));
        assert!(!parsed.matches(&labels(&[("zone", "b"), ("tier", "api"), ("gpu", "")])));
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        };
        assert!(selector_string(&bad).is_err());
    }
}
