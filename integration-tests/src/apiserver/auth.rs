//! Authentication (bearer tokens) and RBAC authorization, as the real API
//! server does them for what Margay and kubectl use.
//!
//! Authentication:
//! - the admin token (the one in [`super::kubeconfig`]) is user
//!   `kubernetes-admin` in group `system:masters`, which RBAC lets do
//!   anything (as on a real cluster);
//! - ServiceAccount tokens come from the TokenRequest API
//!   (`POST .../serviceaccounts/NAME/token`, what `kubectl create token`
//!   calls): `mgsa1.<payload>.<HMAC-SHA1>` signed with a key kept next to
//!   the state file (so tokens outlive a restart of the server), naming the
//!   ServiceAccount by namespace, name and UID; a token stops working when
//!   it expires or its ServiceAccount is deleted (UID check). Such a token
//!   is user `system:serviceaccount:NS:NAME` in groups
//!   `system:serviceaccounts`, `system:serviceaccounts:NS`;
//! - every authenticated user is in `system:authenticated`;
//! - no token or an unknown one: 401. `/healthz`, `/livez`, `/readyz` and
//!   `/version` need none (the default `system:public-info-viewer`).
//!
//! Authorization: the RBAC objects in the store (ClusterRoles, Roles,
//! ClusterRoleBindings, RoleBindings) are evaluated per request: verb
//! (get, list, watch, create, update, patch, delete, deletecollection),
//! API group, resource and subresource (`nodes/status`, `*/status`, `*`),
//! namespace (a RoleBinding grants within its namespace, with a Role or a
//! ClusterRole), and resourceNames (for requests that name an object; a
//! list or watch with `fieldSelector=metadata.name=X` names X, as the real
//! server's request info does). Discovery and OpenAPI are open to every
//! authenticated user (`system:discovery`). Not implemented: aggregated
//! ClusterRoles (`aggregationRule`), impersonation, non-resource URL rules,
//! webhook and node authorizers.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use sha1::Digest as _;

use super::error::ApiError;
use super::store::Store;

/// The admin user's group: allowed everything.
pub const MASTERS: &str = "system:masters";
const TOKEN_PREFIX: &str = "mgsa1";

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
}

impl User {
    fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// The server's authenticator: the admin token and the token signing key.
#[derive(Debug, Clone)]
pub struct Auth {
    admin_token: String,
    key: Vec<u8>,
}

/// What a token says.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    ns: String,
    name: String,
    uid: String,
    /// Expiry, seconds since the epoch.
    exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// HMAC-SHA1 (RFC 2104).
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&sha1::Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| -> [u8; 64] { k.map(|x| x ^ b) };
    let mut inner = sha1::Sha1::new();
    inner.update(pad(0x36));
    inner.update(msg);
    let mut outer = sha1::Sha1::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

impl Auth {
    /// An authenticator with this admin token and signing key.
    pub fn new(admin_token: impl Into<String>, key: Vec<u8>) -> Self {
        Auth {
            admin_token: admin_token.into(),
            key,
        }
    }

    /// The signing key kept at `path` (created, 0600, if absent); a fresh
    /// random key without a path.
    pub fn load_key(path: Option<&Path>) -> std::io::Result<Vec<u8>> {
        let fresh = || -> Vec<u8> { (0..32).map(|_| rand::random::<u8>()).collect() };
        let Some(path) = path else {
            return Ok(fresh());
        };
        match std::fs::read(path) {
            Ok(k) if k.len() >= 16 => Ok(k),
            Ok(_) => Err(std::io::Error::other(format!(
                "{}: token key too short",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let k = fresh();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&k)?;
                f.sync_all()?;
                Ok(k)
            }
            Err(e) => Err(e),
        }
    }

    /// A token for ServiceAccount `ns/name` (UID `uid`), valid `secs`.
    pub fn mint(&self, ns: &str, name: &str, uid: &str, secs: u64) -> (String, u64) {
        let exp = now_secs().saturating_add(secs);
        let claims = Claims {
            ns: ns.into(),
            name: name.into(),
            uid: uid.into(),
            exp,
        };
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{TOKEN_PREFIX}.{payload}");
        let mac = hex::encode(hmac(&self.key, signed.as_bytes()));
        (format!("{signed}.{mac}"), exp)
    }

    /// Who presents `bearer` (the token of an `Authorization: Bearer`
    /// header), checked against the ServiceAccounts in `store`.
    pub fn authenticate(&self, store: &Store, bearer: Option<&str>) -> Result<User, ApiError> {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(ApiError::unauthorized());
        };
        if token == self.admin_token {
            return Ok(User {
                name: "kubernetes-admin".into(),
                groups: vec![MASTERS.into(), "system:authenticated".into()],
            });
        }
        let claims = self.verify(token).ok_or_else(ApiError::unauthorized)?;
        if claims.exp < now_secs() {
            return Err(ApiError::unauthorized());
        }
        let sa_uid = store
            .registry
            .lookup("", "v1", "serviceaccounts")
            .and_then(|def| store.get_obj(&def, Some(&claims.ns), &claims.name))
            .and_then(|o| {
                o.pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        if sa_uid.as_deref() != Some(claims.uid.as_str()) {
            return Err(ApiError::unauthorized());
        }
        Ok(User {
            name: format!("system:serviceaccount:{}:{}", claims.ns, claims.name),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", claims.ns),
                "system:authenticated".into(),
            ],
        })
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        let (signed, mac) = token.rsplit_once('.')?;
        let payload = signed.strip_prefix(TOKEN_PREFIX)?.strip_prefix('.')?;
        let want = hex::encode(hmac(&self.key, signed.as_bytes()));
        // Not constant-time: a test server.
        if want != mac {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

/// What a resource request asks to do (the real server's "request info").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group ("" = core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource ("" if none).
    pub subresource: String,
    /// Namespace (None: cluster scope, or all namespaces).
    pub namespace: Option<String>,
    /// Object name, if the request names one.
    pub name: Option<String>,
}

impl Attributes {
    /// The name a list or watch asks for through `metadata.name=X` alone.
    pub fn name_from_field_selector(sel: &str) -> Option<String> {
        let s = sel.trim();
        if s.contains(',') {
            return None;
        }
        let v = s
            .strip_prefix("metadata.name==")
            .or_else(|| s.strip_prefix("metadata.name="))?;
        (!v.is_empty()).then(|| v.to_string())
    }

    fn resource_with_sub(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Does one PolicyRule allow `a`?
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
    let verbs = strs(rule, "verbs");
    let groups = strs(rule, "apiGroups");
    let resources = strs(rule, "resources");
    let names = strs(rule, "resourceNames");
    if !any(&verbs, &a.verb) || !any(&groups, &a.group) {
        return false;
    }
    let combined = a.resource_with_sub();
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    if !resource_ok {
        return false;
    }
    names.is_empty() || a.name.as_ref().is_some_and(|n| names.contains(n))
}

fn subject_matches(s: &Value, u: &User, binding_ns: Option<&str>) -> bool {
    let field = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
    match field("kind") {
        "User" => field("name") == u.name,
        "Group" => u.in_group(field("name")),
        "ServiceAccount" => {
            let ns = match field("namespace") {
                "" => binding_ns.unwrap_or_default(),
                n => n,
            };
            u.name == format!("system:serviceaccount:{ns}:{}", field("name"))
        }
        _ => false,
    }
}

fn objects<'a>(store: &'a Store, plural: &str) -> Vec<&'a Value> {
    let Some(def) = store
        .registry
        .lookup("rbac.authorization.k8s.io", "v1", plural)
    else {
        return Vec::new();
    };
    store
        .objects
        .get(&def.gr())
        .map(|m| m.values().filter_map(super::object::Obj::parsed).collect())
        .unwrap_or_default()
}

fn role_rules<'a>(store: &'a Store, role_ref: &Value, ns: Option<&str>) -> Vec<&'a Value> {
    let kind = role_ref
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = role_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (plural, want_ns) = match kind {
        "ClusterRole" => ("clusterroles", None),
        "Role" => ("roles", ns),
        _ => return Vec::new(),
    };
    objects(store, plural)
        .into_iter()
        .filter(|o| {
            o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && o.pointer("/metadata/namespace").and_then(Value::as_str) == want_ns
        })
        .flat_map(|o| {
            o.get("rules")
                .and_then(Value::as_array)
                .map(|r| r.iter().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

/// Whether RBAC in `store` allows `u` to do `a`.
pub fn allowed(store: &Store, u: &User, a: &Attributes) -> bool {
    if u.in_group(MASTERS) {
        return true;
    }
    let bound = |b: &Value, ns: Option<&str>| {
        b.get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|subs| subs.iter().any(|s| subject_matches(s, u, ns)))
    };
    let grants = |b: &Value, ns: Option<&str>| {
        b.get("roleRef").is_some_and(|r| {
            role_rules(store, r, ns)
                .iter()
                .any(|rule| rule_allows(rule, a))
        })
    };
    if objects(store, "clusterrolebindings")
        .into_iter()
        .any(|b| bound(b, None) && grants(b, None))
    {
        return true;
    }
    let Some(ns) = a.namespace.as_deref() else {
        return false;
    };
    objects(store, "rolebindings").into_iter().any(|b| {
        b.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            && bound(b, Some(ns))
            && grants(b, Some(ns))
    })
}

/// `allowed`, as the real server answers a denial.
pub fn authorize(store: &Store, u: &User, a: &Attributes) -> Result<(), ApiError> {
    if allowed(store, u, a) {
        return Ok(());
    }
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let what = match &a.name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    Err(ApiError::rbac_forbidden(
        &a.resource,
        &a.group,
        a.name.as_deref(),
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            u.name,
            a.verb,
            a.resource_with_sub(),
            a.group
        ),
    ))
}

/// A SelfSubjectAccessReview's answer for `u` (`kubectl auth can-i`).
pub fn access_review(store: &Store, u: &User, review: &Value) -> Result<Value, ApiError> {
    let ra = review
        .pointer("/spec/resourceAttributes")
        .ok_or_else(|| ApiError::bad_request("only spec.resourceAttributes is supported"))?;
    let f = |k: &str| {
        ra.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let a = Attributes {
        verb: f("verb"),
        group: f("group"),
        resource: f("resource"),
        subresource: f("subresource"),
        namespace: Some(f("namespace")).filter(|s| !s.is_empty()),
        name: Some(f("name")).filter(|s| !s.is_empty()),
    };
    let ok = allowed(store, u, &a);
    let mut out = review.clone();
    out["apiVersion"] = json!("authorization.k8s.io/v1");
    out["kind"] = json!("SelfSubjectAccessReview");
    out["status"] = json!({"allowed": ok});
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: None,
            name: None,
        }
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // RFC 2202 test case 2.
        assert_eq!(
            hex::encode(hmac(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn rules_match_each_dimension_and_nothing_else() {
        let r = json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]});
        assert!(rule_allows(&r, &attrs("patch", "", "nodes", "")));
        assert!(!rule_allows(&r, &attrs("update", "", "nodes", "")), "verb");
        assert!(
            !rule_allows(&r, &attrs("patch", "apps", "nodes", "")),
            "group"
        );
        assert!(
            !rule_allows(&r, &attrs("patch", "", "pods", "")),
            "resource"
        );
        assert!(
            !rule_allows(&r, &attrs("patch", "", "nodes", "status")),
            "subresource"
        );
        let sub = json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]});
        assert!(rule_allows(
            &sub,
            &attrs("update", "x.io", "things", "status")
        ));
        assert!(!rule_allows(&sub, &attrs("update", "x.io", "things", "")));
        let combined =
            json!({"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]});
        assert!(rule_allows(
            &combined,
            &attrs("patch", "", "nodes", "status")
        ));
        assert!(!rule_allows(&combined, &attrs("patch", "", "nodes", "")));
        let named = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"], "resourceNames": ["bgp"]});
        let mut a = attrs("get", "", "secrets", "");
        assert!(!rule_allows(&named, &a), "no name, no match");
        a.name = Some("bgp".into());
        assert!(rule_allows(&named, &a));
        a.name = Some("other".into());
        assert!(!rule_allows(&named, &a));
        assert_eq!(
            Attributes::name_from_field_selector("metadata.name=bgp"),
            Some("bgp".into())
        );
        assert_eq!(
            Attributes::name_from_field_selector("metadata.name=bgp,x=y"),
            None
        );
        assert_eq!(Attributes::name_from_field_selector(""), None);
    }
}
