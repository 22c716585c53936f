use serde_json::json;

use super::*;

fn anp(name: &str, rv: &str, egress_peer: Value) -> Value {
    json!({
        "metadata": {"name": name, "resourceVersion": rv, "generation": 3},
        "spec": {"priority": 5, "subject": {"namespaces": {}},
                 "egress": [{"name": "out", "action": "Allow", "to": [egress_peer]}]}
    })
}

#[test]
fn a_valid_policy_is_accepted_with_its_generation() {
    let d = derive(
        AdminKind::Admin,
        &anp("ok", "1", json!({"networks": ["198.19.0.0/16"]})),
    );
    assert!(d.accepted);
    assert_eq!(d.reason, REASON_ACCEPTED);
    assert_eq!(d.observed_generation, Some(3));
}

#[test]
fn an_unsupported_peer_is_named_in_the_message() {
    let d = derive(
        AdminKind::Admin,
        &anp("fqdn", "1", json!({"domainNames": ["example.org"]})),
    );
    assert!(!d.accepted);
    assert_eq!(d.reason, REASON_UNSUPPORTED);
    assert!(d.message.contains("domainNames"), "{}", d.message);
    assert!(d.message.contains("egress rule 0"), "{}", d.message);
}

#[test]
fn invalid_objects_and_rules_are_rejected_naming_the_field() {
    // Object level: priority out of range.
    let mut o = anp("hi", "1", json!({"networks": ["198.19.0.0/16"]}));
    o["spec"]["priority"] = json!(5000);
    let d = derive(AdminKind::Admin, &o);
    assert_eq!((d.accepted, d.reason), (false, REASON_INVALID));
    assert!(d.message.contains("spec.priority"), "{}", d.message);
    // Rule level: a CIDR that is not one.
    let d = derive(
        AdminKind::Admin,
        &anp("bad", "1", json!({"networks": ["198.19.0.1"]})),
    );
    assert_eq!((d.accepted, d.reason), (false, REASON_INVALID));
    assert!(d.message.contains("networks"), "{}", d.message);
    // Not readable at all: an unknown field in a closed part.
    let mut o = anp("x", "1", json!({"networks": ["198.19.0.0/16"]}));
    o["spec"]["subjekt"] = json!({});
    let d = derive(AdminKind::Admin, &o);
    assert_eq!((d.accepted, d.reason), (false, REASON_INVALID));
    assert!(d.message.contains("subjekt"), "{}", d.message);
    // A baseline not named `default`.
    let b = json!({"metadata": {"name": "other", "resourceVersion": "1"},
                   "spec": {"subject": {"namespaces": {}}}});
    let d = derive(AdminKind::Baseline, &b);
    assert!(!d.accepted);
    assert!(d.message.contains("default"), "{}", d.message);
}

#[test]
fn status_is_written_only_when_the_condition_changes() {
    let ok = Desired {
        accepted: true,
        reason: REASON_ACCEPTED,
        message: "m".into(),
        observed_generation: Some(1),
    };
    let other = json!({"type": "Other", "status": "True"});
    let first = next_status(Some(&json!({"conditions": [other]})), &ok, "T1").expect("new");
    assert_eq!(
        first["conditions"][0]["type"], "Other",
        "other conditions kept"
    );
    assert_eq!(first["conditions"][1]["lastTransitionTime"], "T1");
    assert_eq!(first["conditions"][1]["observedGeneration"], 1);
    // Same condition later: nothing to write, whatever the time.
    assert_eq!(next_status(Some(&first), &ok, "T2"), None);
    // New generation, same status: written, transition time kept.
    let gen2 = Desired {
        observed_generation: Some(2),
        ..ok.clone()
    };
    let second = next_status(Some(&first), &gen2, "T3").expect("generation");
    assert_eq!(second["conditions"][1]["lastTransitionTime"], "T1");
    // Status flips: the transition time moves.
    let bad = Desired {
        accepted: false,
        reason: REASON_INVALID,
        message: "why".into(),
        observed_generation: Some(2),
    };
    let third = next_status(Some(&second), &bad, "T4").expect("flip");
    assert_eq!(third["conditions"][1]["status"], "False");
    assert_eq!(third["conditions"][1]["lastTransitionTime"], "T4");
    assert_eq!(third["conditions"].as_array().map(Vec::len), Some(2));
}

#[test]
fn many_reconciles_make_one_write() {
    let mut p = Planner::default();
    let mut obj = anp("ok", "10", json!({"networks": ["198.19.0.0/16"]}));
    let writes = p.plan([(AdminKind::Admin, &obj)], "T1");
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].resource_version, "10");
    // The watch has not shown the write yet: reconciles send nothing.
    for _ in 0..20 {
        assert!(p.plan([(AdminKind::Admin, &obj)], "T2").is_empty());
    }
    // The watch shows it (new resourceVersion, the written status).
    obj["status"] = writes[0].status.clone();
    obj["metadata"]["resourceVersion"] = json!("11");
    for _ in 0..20 {
        assert!(p.plan([(AdminKind::Admin, &obj)], "T3").is_empty());
    }
    // A spec change that makes it invalid: one more write.
    obj["spec"]["egress"][0]["to"][0] = json!({"networks": ["nope"]});
    obj["metadata"]["resourceVersion"] = json!("12");
    let w = p.plan([(AdminKind::Admin, &obj)], "T4");
    assert_eq!(w.len(), 1);
    assert!(!w[0].desired.accepted);
    // That write failed (conflict): decided again at the next reconcile.
    p.failed(&w[0]);
    assert_eq!(p.plan([(AdminKind::Admin, &obj)], "T5").len(), 1);
}
