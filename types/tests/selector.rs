//! The label selector's semantics. The `UPSTREAM_*` tables are the cases of
//! Kubernetes' own selector tests, written here as data:
//! k8s.io/apimachinery/pkg/labels/selector_test.go (TestSelectorParse,
//! TestDeterministicParse, TestSelectorMatches, TestSetSelectorParser,
//! TestRequirementConstructor, TestRequirementSelectorMatching). Where
//! Margay's selector deliberately differs, the case says so in `differs`:
//! it has no `>`/`<` operators (no Margay object uses them) and no empty
//! values in the text form (`x=`, `x in ()`), which pool node selectors
//! never need.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use margay_types::selector::MAX_SELECTOR_LEN;
use margay_types::{Labels, Requirement, Selector, SelectorError, Values};

/// Labels as written in the tables.
type Kv = &'static [(&'static str, &'static str)];

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

fn set(vs: &[&str]) -> Values {
    vs.iter().map(|v| v.to_string()).collect()
}

// ---- upstream: parsing -------------------------------------------------

/// (text, valid here, what upstream says when it differs)
const UPSTREAM_PARSE: &[(&str, bool, Option<&str>)] = &[
    // TestSelectorParse: good strings
    ("x=a,y=b,z=c", true, None),
    ("", true, None),
    ("x!=a,y=b", true, None),
    ("!x", true, None),
    (
        "x=",
        false,
        Some("upstream: valid, x equals the empty value"),
    ),
    (
        "x= ",
        false,
        Some("upstream: valid, x equals the empty value"),
    ),
    ("x>1", false, Some("upstream: valid, Gt operator")),
    ("x>1,z<5", false, Some("upstream: valid, Gt/Lt operators")),
    // TestSelectorParse: bad strings
    ("x=a||y=b", false, None),
    ("x==a==b", false, None),
    ("!x=a", false, None),
    ("x<a", false, None),
    // TestSetSelectorParser
    ("\rx", true, None),
    ("this-is-a-dns.domain.com/key-with-dash", true, None),
    (
        "this-is-another-dns.domain.com/key-with-dash in (so,what)",
        true,
        None,
    ),
    (
        "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
        true,
        None,
    ),
    ("foo  in\t (abc)", true, None),
    ("x notin\n (abc)", true, None),
    ("x  notin\t\t\t(abc,def)", true, None),
    ("x in (abc,def)", true, None),
    (
        "x in (abc,)",
        false,
        Some("upstream: valid, values abc and the empty value"),
    ),
    ("x in ()", false, Some("upstream: valid, the empty value")),
    ("x=a", true, None),
    ("x=a,y!=b", true, None),
    ("x=a,y!=b,z in (h,i,j)", true, None),
    ("x nott in (y)", false, None),
    ("a in (xyz),", false, None),
    ("a in (xyz)b notin ()", false, None),
    ("a ", true, None),
    ("a in (x,y,notin, z,in)", true, None),
    ("a in (xyz abc)", false, None),
    ("a notin(", false, None),
    ("a (", false, None),
    ("(", false, None),
];

#[test]
fn upstream_parse_cases() {
    for (text, valid, differs) in UPSTREAM_PARSE {
        let got = text.parse::<Selector>();
        assert_eq!(
            got.is_ok(),
            *valid,
            "{text:?}: got {got:?} (upstream note: {differs:?})"
        );
        if let Ok(s) = got {
            // Display round-trips to an equal selector.
            assert_eq!(s.to_string().parse::<Selector>(), Ok(s.clone()), "{text:?}");
        }
    }
}

#[test]
fn upstream_parse_results() {
    // TestSetSelectorParser: what the valid strings parse to.
    let cases: &[(&str, Vec<Requirement>)] = &[
        ("", vec![]),
        ("\rx", vec![Requirement::Exists("x".into())]),
        (
            "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
            vec![Requirement::NotIn(
                "0.1.2.domain/99".into(),
                set(&["10.10.100.1", "tick.tack.clock"]),
            )],
        ),
        (
            "x  notin\t\t\t(abc,def)",
            vec![Requirement::NotIn("x".into(), set(&["abc", "def"]))],
        ),
        (
            "x=a,y!=b,z in (h,i,j)",
            vec![
                Requirement::In("x".into(), set(&["a"])),
                Requirement::In("z".into(), set(&["h", "i", "j"])),
                Requirement::NotIn("y".into(), set(&["b"])),
            ],
        ),
        (
            "a in (x,y,notin, z,in)",
            vec![Requirement::In(
                "a".into(),
                set(&["in", "notin", "x", "y", "z"]),
            )],
        ),
    ];
    for (text, want) in cases {
        let got: Selector = text.parse().unwrap();
        assert_eq!(got, Selector::from_requirements(want.clone()), "{text:?}");
    }
}

#[test]
fn upstream_deterministic_parse() {
    let a: Selector = "x=a,a=x".parse().unwrap();
    let b: Selector = "a=x,x=a".parse().unwrap();
    assert_eq!(a.to_string(), b.to_string());
    assert_eq!(a, b);
}

// ---- upstream: matching ------------------------------------------------

/// (selector text, labels, matches) from TestSelectorMatches.
const UPSTREAM_MATCHES: &[(&str, Kv, bool)] = &[
    ("", &[("x", "y")], true),
    ("x=y", &[("x", "y")], true),
    ("x=y,z=w", &[("x", "y"), ("z", "w")], true),
    ("x!=y,z!=w", &[("x", "z"), ("z", "a")], true),
    ("notin=in", &[("notin", "in")], true),
    ("x", &[("x", "z")], true),
    ("!x", &[("y", "z")], true),
    ("x=z", &[], false),
    ("x=y", &[("x", "z")], false),
    ("x=y,z=w", &[("x", "w"), ("z", "w")], false),
    ("x!=y,z!=w", &[("x", "z"), ("z", "w")], false),
    ("x", &[("y", "z")], false),
    ("!x", &[("x", "z")], false),
    ("foo=bar", &[("foo", "bar"), ("baz", "blah")], true),
    ("baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
    ("foo=bar,baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
    ("foo=blah", &[("foo", "bar"), ("baz", "blah")], false),
    ("baz=bar", &[("foo", "bar"), ("baz", "blah")], false),
    (
        "foo=bar,foobar=bar,baz=blah",
        &[("foo", "bar"), ("baz", "blah")],
        false,
    ),
];

#[test]
fn upstream_matches() {
    for (text, l, want) in UPSTREAM_MATCHES {
        let s: Selector = text.parse().unwrap();
        assert_eq!(s.matches(&labels(l)), *want, "{text:?} on {l:?}");
    }
}

/// (key, operator, values, valid) from TestRequirementConstructor (the
/// operators a LabelSelector has; Gt/Lt and the 253-byte key rule are not
/// ours).
const UPSTREAM_REQUIREMENTS: &[(&str, &str, &[&str], bool)] = &[
    ("x", "In", &[], false),
    ("x", "NotIn", &[], false),
    ("x", "In", &["foo"], true),
    ("x", "NotIn", &["foo"], true),
    ("x", "Exists", &[], true),
    ("x", "DoesNotExist", &[], true),
    ("1foo", "In", &["bar"], true),
    ("1234", "In", &["bar"], true),
];

#[test]
fn upstream_requirement_constructor() {
    for (k, op, vs, valid) in UPSTREAM_REQUIREMENTS {
        let got = Selector::compile(&sel(&[], vec![expr(k, op, vs)]));
        assert_eq!(got.is_ok(), *valid, "{k} {op} {vs:?}: {got:?}");
    }
}

#[test]
fn upstream_requirement_selector_matching() {
    // TestRequirementSelectorMatching (those without empty values or Gt).
    let cases: &[(Kv, Vec<LabelSelectorRequirement>, bool)] = &[
        (
            &[("x", "foo"), ("y", "baz")],
            vec![expr("x", "In", &["foo"]), expr("y", "NotIn", &["alpha"])],
            true,
        ),
        (
            &[("x", "foo"), ("y", "baz")],
            vec![expr("x", "In", &["foo"]), expr("y", "In", &["alpha"])],
            false,
        ),
        (
            &[("y", "")],
            vec![expr("x", "DoesNotExist", &[]), expr("y", "Exists", &[])],
            true,
        ),
    ];
    for (l, exprs, want) in cases {
        let s = Selector::compile(&sel(&[], exprs.clone())).unwrap();
        assert_eq!(s.matches(&labels(l)), *want, "{exprs:?} on {l:?}");
    }
}

// ---- compiled LabelSelectors (the policy engine's cases) ---------------

#[test]
fn empty_selector_matches_everything() {
    let s = Selector::compile(&LabelSelector::default()).unwrap();
    assert!(s.is_everything());
    assert!(s.matches(&labels(&[])));
    assert!(s.matches(&labels(&[("a", "b")])));
    assert_eq!(Selector::compile_opt(None), Ok(Selector::everything()));
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
    assert!(matches!(
        Selector::compile(&sel(&[], vec![expr("x", "Near", &[])])),
        Err(SelectorError::BadOperator { .. })
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
    // The canonical text names nft sets: it must not drift.
    assert_eq!(
        a.canonical(),
        r#"{in "a" {"1"};in "b" {"2", "3"};exists "c";}"#
    );
}

// ---- the text form (pool node selectors) -------------------------------

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
        assert!(sel.matches(&Labels::new()));
        assert!(sel.is_everything());
    }
    assert_eq!(Selector::everything().to_string(), "all()");
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
        assert!(
            matches!(s.parse::<Selector>(), Err(SelectorError::Syntax { .. })),
            "{s:?} should fail"
        );
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

#[test]
fn label_selectors_print_in_the_text_form_and_parse_back() {
    // What the agent does with an IPPool's nodeSelector: compile the
    // LabelSelector, print it, and the text selects the same nodes.
    let ls = sel(
        &[("zone", "a")],
        vec![
            expr("tier", "In", &["web", "api"]),
            expr("spot", "DoesNotExist", &[]),
            expr("gpu", "Exists", &[]),
        ],
    );
    let compiled = Selector::compile(&ls).unwrap();
    let text = compiled.to_string();
    assert_eq!(text, "tier in (api, web), zone in (a), gpu, !spot");
    let parsed: Selector = text.parse().unwrap();
    assert_eq!(parsed, compiled);
    assert!(parsed.matches(&labels(&[("zone", "a"), ("tier", "api"), ("gpu", "")])));
    assert!(!parsed.matches(&labels(&[
        ("zone", "a"),
        ("tier", "api"),
        ("gpu", ""),
        ("spot", "1")
    ])));
    assert!(!parsed.matches(&labels(&[("zone", "b"), ("tier", "api"), ("gpu", "")])));
}

/// `in` values are kept as a sorted slice: repeats dropped, and they order,
/// compare and print as the `BTreeSet` they replaced did (selectors are
/// ordered, and printed into set names, by them).
#[test]
fn values_behave_as_the_set_they_replaced() {
    use std::collections::BTreeSet;
    let lists: &[&[&str]] = &[
        &["b", "a", "b"],
        &["a"],
        &["a", "b"],
        &[],
        &["ab"],
        &["a", "c"],
        &["c", "b", "a", "a"],
    ];
    let values: Vec<Values> = lists.iter().map(|l| set(l)).collect();
    let sets: Vec<BTreeSet<String>> = lists
        .iter()
        .map(|l| l.iter().map(|v| v.to_string()).collect())
        .collect();
    for (v, s) in values.iter().zip(&sets) {
        assert_eq!(v.len(), s.len());
        assert!(v.iter().eq(s.iter()));
        assert_eq!(format!("{v:?}"), format!("{s:?}"));
        for probe in ["a", "b", "c", "ab", "", "z"] {
            assert_eq!(v.contains(probe), s.contains(probe), "{s:?} {probe}");
        }
    }
    for (i, j) in (0..lists.len()).flat_map(|i| (0..lists.len()).map(move |j| (i, j))) {
        assert_eq!(values[i].cmp(&values[j]), sets[i].cmp(&sets[j]), "{i} {j}");
        assert_eq!(values[i] == values[j], sets[i] == sets[j]);
    }
}
