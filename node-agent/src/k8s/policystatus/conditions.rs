//! What an AdminNetworkPolicy / BaselineAdminNetworkPolicy's `Accepted`
//! condition says, derived from what the policy crate reports when it reads
//! and compiles the object, and the status write that makes the object say
//! it (only when it says something else now: no write storms).
//!
//! The network-policy-api leaves `status.conditions` to implementations
//! (v1alpha1: "not standardized in alpha"; the list is a map keyed by
//! `type`). Margay follows the Gateway API's vocabulary, the nearest
//! SIG-Network convention: type `Accepted`, reason `Accepted` (True),
//! `Invalid` (False: the object or some of its rules are not valid and
//! are ignored or fail closed) or `Unsupported` (False: valid, but a part
//! Margay does not implement, e.g. `domainNames` peers, matches nothing).

use std::collections::BTreeMap;

use policy::compile::admin::{
    AdminKind, AdminPolicyError, Consequence, compile_admin, compile_baseline,
};
use serde_json::{Value, json};

/// The condition type Margay writes.
pub const ACCEPTED: &str = "Accepted";
/// Reason of `Accepted=True`.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Reason of `Accepted=False` for an object or rule that is not valid.
pub const REASON_INVALID: &str = "Invalid";
/// Reason of `Accepted=False` for a valid part Margay does not implement.
pub const REASON_UNSUPPORTED: &str = "Unsupported";
/// `metav1.Condition.message` is at most this long.
const MAX_MESSAGE: usize = 32_768;

/// The `Accepted` condition an object should carry (without its
/// `lastTransitionTime`, which depends on what it carries now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
    /// `metadata.generation` of the object it was derived from.
    pub observed_generation: Option<i64>,
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn rejected(errors: &[AdminPolicyError]) -> Desired {
    let unsupported_only = errors.iter().all(|e| {
        matches!(
            e,
            AdminPolicyError::Rule {
                consequence: Consequence::PeerMatchesNothing,
                ..
            }
        )
    });
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Desired {
        accepted: false,
        reason: if unsupported_only {
            REASON_UNSUPPORTED
        } else {
            REASON_INVALID
        },
        message: truncate(message),
        observed_generation: None,
    }
}

/// The condition for one watched object (its whole JSON: metadata, spec,
/// status).
pub fn derive(kind: AdminKind, obj: &Value) -> Desired {
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let compiled = match kind {
        AdminKind::Admin => policy::admin::AdminNetworkPolicy::from_value(obj.clone())
            .map_err(|e| e.to_string())
            .map(|p| compile_admin(name, &p)),
        AdminKind::Baseline => policy::admin::BaselineAdminNetworkPolicy::from_value(obj.clone())
            .map_err(|e| e.to_string())
            .map(|p| compile_baseline(name, &p)),
    };
    let mut d = match compiled {
        Err(parse) => Desired {
            accepted: false,
            reason: REASON_INVALID,
            message: truncate(format!("{parse}; the policy is ignored")),
            observed_generation: None,
        },
        Ok(Err(e)) => rejected(std::slice::from_ref(&e)),
        Ok(Ok((_, errors))) if !errors.is_empty() => rejected(&errors),
        Ok(Ok(_)) => Desired {
            accepted: true,
            reason: REASON_ACCEPTED,
            message: format!("{kind} {name} is enforced"),
            observed_generation: None,
        },
    };
    d.observed_generation = generation;
    d
}

fn condition(d: &Desired, last_transition: &str) -> Value {
    let mut c = json!({
        "type": ACCEPTED,
        "status": if d.accepted { "True" } else { "False" },
        "reason": d.reason,
        "message": d.message,
        "lastTransitionTime": last_transition,
    });
    if let Some(g) = d.observed_generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

/// The object's `status` with its `Accepted` condition set to `d`, or
/// `None` when it already says that (`lastTransitionTime` aside). Other
/// conditions and status fields are kept; `lastTransitionTime` is kept when
/// the condition's status does not change, else it is `now` (RFC 3339).
pub fn next_status(current: Option<&Value>, d: &Desired, now: &str) -> Option<Value> {
    let mut status = match current {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let at = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some(ACCEPTED));
    let s = |c: &Value, k: &str| c.get(k).cloned().unwrap_or(Value::Null);
    let want = condition(d, now);
    let transition = match at.map(|i| &conditions[i]) {
        Some(old) => {
            let same = ["status", "reason", "message", "observedGeneration"]
                .iter()
                .all(|k| s(old, k) == s(&want, k));
            if same {
                return None;
            }
            match old.get("lastTransitionTime").and_then(Value::as_str) {
                Some(t) if s(old, "status") == s(&want, "status") => t.to_string(),
                _ => now.to_string(),
            }
        }
        None => now.to_string(),
    };
    let c = condition(d, &transition);
    match at {
        Some(i) => conditions[i] = c,
        None => conditions.push(c),
    }
    status.insert("conditions".into(), Value::Array(conditions));
    Some(Value::Object(status))
}

/// One status write: `PUT .../<name>/status` guarded by the
/// resourceVersion the decision was made on.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub kind: AdminKind,
    pub name: String,
    pub resource_version: String,
    pub status: Value,
    /// Accepted or not (for logs).
    pub desired: Desired,
}

/// Decides the writes of one reconcile. Writes already sent whose result
/// the watch has not shown yet are not sent again: a write made on
/// resourceVersion `v` is pending until the cached object's version is no
/// longer `v`.
#[derive(Debug, Default)]
pub struct Planner {
    pending: BTreeMap<(AdminKind, String), String>,
}

impl Planner {
    /// The writes that make every object's condition what it should be.
    /// `objects`: the cached objects as JSON.
    pub fn plan<'a>(
        &mut self,
        objects: impl IntoIterator<Item = (AdminKind, &'a Value)>,
        now: &str,
    ) -> Vec<StatusWrite> {
        let mut out = Vec::new();
        let mut live = BTreeMap::new();
        for (kind, obj) in objects {
            let meta = |k: &str| {
                obj.pointer(&format!("/metadata/{k}"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let (Some(name), Some(rv)) = (meta("name"), meta("resourceVersion")) else {
                continue;
            };
            let key = (kind, name.clone());
            live.insert(key.clone(), ());
            if self.pending.get(&key) == Some(&rv) {
                continue;
            }
            self.pending.remove(&key);
            let desired = derive(kind, obj);
            if let Some(status) = next_status(obj.get("status"), &desired, now) {
                self.pending.insert(key, rv.clone());
                out.push(StatusWrite {
                    kind,
                    name,
                    resource_version: rv,
                    status,
                    desired,
                });
            }
        }
        self.pending.retain(|k, _| live.contains_key(k));
        out
    }

    /// A write failed (conflict, error): decide again at the next reconcile.
    pub fn failed(&mut self, w: &StatusWrite) {
        self.pending.remove(&(w.kind, w.name.clone()));
    }

    /// Forgets every pending write (leadership lost or regained).
    pub fn reset(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests;
