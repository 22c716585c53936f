//! Decoding of `application/vnd.kubernetes.protobuf` request bodies.
//!
//! kubectl's typed commands (`kubectl create namespace|configmap|secret|
//! serviceaccount|service|role|clusterrole|rolebinding|clusterrolebinding`)
//! send protobuf, not JSON. The server answers in JSON (kubectl accepts it),
//! so only decoding is needed, and only for the kinds those commands create.
//! Field numbers are from `k8s.io/api` and `k8s.io/apimachinery`
//! `generated.proto`. Zero values are dropped (as JSON `omitempty` would).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::meta::rfc3339;

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Not `k8s\0` + runtime.Unknown.
    #[error("not a Kubernetes protobuf envelope")]
    NoEnvelope,
    /// Truncated or invalid wire data.
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    /// A kind this server cannot decode from protobuf.
    #[error("protobuf bodies of {0} are not supported by this test server; send JSON")]
    Unsupported(String),
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Time,
    IntOrString,
    MapStr,
    MapBytes,
    Msg(&'static [F]),
}

/// One field: number, JSON name, type, repeated?
struct F(u32, &'static str, Ty, bool);

use Ty::*;

const OWNER_REF: &[F] = &[
    F(5, "apiVersion", Str, false),
    F(1, "kind", Str, false),
    F(3, "name", Str, false),
    F(4, "uid", Str, false),
    F(6, "controller", Bool, false),
    F(7, "blockOwnerDeletion", Bool, false),
];
const OBJECT_META: &[F] = &[
    F(1, "name", Str, false),
    F(2, "generateName", Str, false),
    F(3, "namespace", Str, false),
    F(5, "uid", Str, false),
    F(6, "resourceVersion", Str, false),
    F(7, "generation", Int, false),
    F(8, "creationTimestamp", Time, false),
    F(9, "deletionTimestamp", Time, false),
    F(10, "deletionGracePeriodSeconds", Int, false),
    F(11, "labels", MapStr, false),
    F(12, "annotations", MapStr, false),
    F(13, "ownerReferences", Msg(OWNER_REF), true),
    F(14, "finalizers", Str, true),
];
const NAMESPACE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(&[F(1, "finalizers", Str, true)]), false),
    F(3, "status", Msg(&[F(1, "phase", Str, false)]), false),
];
const CONFIG_MAP: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(4, "immutable", Bool, false),
    F(2, "data", MapStr, false),
    F(3, "binaryData", MapBytes, false),
];
const SECRET: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(5, "immutable", Bool, false),
    F(2, "data", MapBytes, false),
    F(4, "stringData", MapStr, false),
    F(3, "type", Str, false),
];
const OBJECT_REF: &[F] = &[
    F(1, "kind", Str, false),
    F(2, "namespace", Str, false),
    F(3, "name", Str, false),
    F(4, "uid", Str, false),
    F(5, "apiVersion", Str, false),
    F(6, "resourceVersion", Str, false),
    F(7, "fieldPath", Str, false),
];
const SERVICE_ACCOUNT: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "secrets", Msg(OBJECT_REF), true),
    F(
        3,
        "imagePullSecrets",
        Msg(&[F(1, "name", Str, false)]),
        true,
    ),
    F(4, "automountServiceAccountToken", Bool, false),
];
const SERVICE_PORT: &[F] = &[
    F(1, "name", Str, false),
    F(2, "protocol", Str, false),
    F(6, "appProtocol", Str, false),
    F(3, "port", Int, false),
    F(4, "targetPort", IntOrString, false),
    F(5, "nodePort", Int, false),
];
const SERVICE_SPEC: &[F] = &[
    F(1, "ports", Msg(SERVICE_PORT), true),
    F(2, "selector", MapStr, false),
    F(3, "clusterIP", Str, false),
    F(18, "clusterIPs", Str, true),
    F(4, "type", Str, false),
    F(5, "externalIPs", Str, true),
    F(7, "sessionAffinity", Str, false),
    F(8, "loadBalancerIP", Str, false),
    F(9, "loadBalancerSourceRanges", Str, true),
    F(10, "externalName", Str, false),
    F(11, "externalTrafficPolicy", Str, false),
    F(12, "healthCheckNodePort", Int, false),
    F(13, "publishNotReadyAddresses", Bool, false),
    F(19, "ipFamilies", Str, true),
    F(17, "ipFamilyPolicy", Str, false),
    F(20, "allocateLoadBalancerNodePorts", Bool, false),
    F(21, "loadBalancerClass", Str, false),
    F(22, "internalTrafficPolicy", Str, false),
];
const SERVICE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(SERVICE_SPEC), false),
];
const POLICY_RULE: &[F] = &[
    F(1, "verbs", Str, true),
    F(2, "apiGroups", Str, true),
    F(3, "resources", Str, true),
    F(4, "resourceNames", Str, true),
    F(5, "nonResourceURLs", Str, true),
];
const LABEL_SELECTOR: &[F] = &[
    F(1, "matchLabels", MapStr, false),
    F(
        2,
        "matchExpressions",
        Msg(&[
            F(1, "key", Str, false),
            F(2, "operator", Str, false),
            F(3, "values", Str, true),
        ]),
        true,
    ),
];
const ROLE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "rules", Msg(POLICY_RULE), true),
];
const CLUSTER_ROLE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "rules", Msg(POLICY_RULE), true),
    F(
        3,
        "aggregationRule",
        Msg(&[F(1, "clusterRoleSelectors", Msg(LABEL_SELECTOR), true)]),
        false,
    ),
];
const SUBJECT: &[F] = &[
    F(1, "kind", Str, false),
    F(2, "apiGroup", Str, false),
    F(3, "name", Str, false),
    F(4, "namespace", Str, false),
];
const ROLE_REF: &[F] = &[
    F(1, "apiGroup", Str, false),
    F(2, "kind", Str, false),
    F(3, "name", Str, false),
];
const BINDING: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "subjects", Msg(SUBJECT), true),
    F(3, "roleRef", Msg(ROLE_REF), false),
];

// `kubectl create token` (field numbers checked against kubectl 1.32's
// request body: expirationSeconds is 4).
const TOKEN_REQUEST: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(
        2,
        "spec",
        Msg(&[
            F(1, "audiences", Str, true),
            F(4, "expirationSeconds", Int, false),
            F(
                3,
                "boundObjectRef",
                Msg(&[
                    F(1, "kind", Str, false),
                    F(2, "apiVersion", Str, false),
                    F(3, "name", Str, false),
                    F(4, "uid", Str, false),
                ]),
                false,
            ),
        ]),
        false,
    ),
];
// `kubectl auth can-i`.
const RESOURCE_ATTRIBUTES: &[F] = &[
    F(1, "namespace", Str, false),
    F(2, "verb", Str, false),
    F(3, "group", Str, false),
    F(4, "version", Str, false),
    F(5, "resource", Str, false),
    F(6, "subresource", Str, false),
    F(7, "name", Str, false),
];
const SELF_SUBJECT_ACCESS_REVIEW: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(
        2,
        "spec",
        Msg(&[
            F(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES), false),
            F(
                2,
                "nonResourceAttributes",
                Msg(&[F(1, "path", Str, false), F(2, "verb", Str, false)]),
                false,
            ),
        ]),
        false,
    ),
];

fn schema(api_version: &str, kind: &str) -> Option<&'static [F]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Service") => SERVICE,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => BINDING,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        _ => return None,
    })
}

/// A wire value.
enum Wire<'a> {
    Varint(u64),
    /// A fixed32/fixed64 value (no field we decode uses them).
    Fixed,
    Len(&'a [u8]),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or(ProtoError::Malformed("truncated varint"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.0.len() {
            return Err(ProtoError::Malformed("truncated field"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtoError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let num =
            u32::try_from(tag >> 3).map_err(|_| ProtoError::Malformed("field number too large"))?;
        let w = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| ProtoError::Malformed("length too large"))?;
                Wire::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            _ => return Err(ProtoError::Malformed("unsupported wire type")),
        };
        Ok(Some((num, w)))
    }
}

fn utf8(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
}

fn decode_map(b: &[u8], bytes: bool) -> Result<(String, Value), ProtoError> {
    let (mut k, mut v) = (String::new(), json!(""));
    let mut r = Reader(b);
    while let Some((num, w)) = r.next()? {
        match (num, w) {
            (1, Wire::Len(x)) => k = utf8(x)?,
            (2, Wire::Len(x)) if bytes => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(x))
            }
            (2, Wire::Len(x)) => v = json!(utf8(x)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn decode_scalar(ty: Ty, w: Wire<'_>, depth: usize) -> Result<Option<Value>, ProtoError> {
    Ok(match (ty, w) {
        (Str, Wire::Len(b)) => Some(json!(utf8(b)?)),
        // int32/int64 are two's-complement varints.
        (Int, Wire::Varint(v)) => Some(json!(v as i64)),
        (Bool, Wire::Varint(v)) => Some(json!(v != 0)),
        (Time, Wire::Len(b)) => {
            let mut r = Reader(b);
            let mut secs = 0i64;
            while let Some((num, w)) = r.next()? {
                if let (1, Wire::Varint(v)) = (num, w) {
                    secs = v as i64;
                }
            }
            (secs != 0).then(|| json!(rfc3339(secs)))
        }
        (IntOrString, Wire::Len(b)) => {
            let mut r = Reader(b);
            let (mut is_str, mut i, mut s) = (false, 0i64, String::new());
            while let Some((num, w)) = r.next()? {
                match (num, w) {
                    (1, Wire::Varint(v)) => is_str = v == 1,
                    (2, Wire::Varint(v)) => i = i64::from(v as i32),
                    (3, Wire::Len(x)) => s = utf8(x)?,
                    _ => {}
                }
            }
            Some(if is_str { json!(s) } else { json!(i) })
        }
        (Msg(fields), Wire::Len(b)) => Some(decode_msg(b, fields, depth + 1)?),
        (_, Wire::Fixed | Wire::Varint(_) | Wire::Len(_)) => None,
    })
}

fn decode_msg(b: &[u8], fields: &[F], depth: usize) -> Result<Value, ProtoError> {
    if depth > 16 {
        return Err(ProtoError::Malformed("nesting too deep"));
    }
    let mut out = Map::new();
    let mut r = Reader(b);
    while let Some((num, w)) = r.next()? {
        let Some(F(_, name, ty, repeated)) = fields.iter().find(|f| f.0 == num) else {
            continue;
        };
        match ty {
            MapStr | MapBytes => {
                if let Wire::Len(x) = w {
                    let (k, v) = decode_map(x, matches!(ty, MapBytes))?;
                    let m = out.entry(name.to_string()).or_insert_with(|| json!({}));
                    if let Some(m) = m.as_object_mut() {
                        m.insert(k, v);
                    }
                }
            }
            _ => {
                let Some(v) = decode_scalar(*ty, w, depth)? else {
                    continue;
                };
                if *repeated {
                    let a = out.entry(name.to_string()).or_insert_with(|| json!([]));
                    if let Some(a) = a.as_array_mut() {
                        a.push(v);
                    }
                } else {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    // Drop zero values of scalars, as `omitempty` would.
    out.retain(|_, v| {
        !matches!(v, Value::String(s) if s.is_empty()) && *v != json!(0) && *v != json!(false)
    });
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed runtime.Unknown into the JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let inner = body.strip_prefix(b"k8s\0").ok_or(ProtoError::NoEnvelope)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut r = Reader(inner);
    while let Some((num, w)) = r.next()? {
        match (num, w) {
            (1, Wire::Len(tm)) => {
                let mut t = Reader(tm);
                while let Some((n, w)) = t.next()? {
                    match (n, w) {
                        (1, Wire::Len(x)) => api_version = utf8(x)?,
                        (2, Wire::Len(x)) => kind = utf8(x)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(x)) => raw = x,
            (3, Wire::Len(x)) if !x.is_empty() => {
                return Err(ProtoError::Unsupported("compressed envelopes".into()));
            }
            _ => {}
        }
    }
    let fields = schema(&api_version, &kind)
        .ok_or_else(|| ProtoError::Unsupported(format!("{api_version} {kind}")))?;
    let mut obj = decode_msg(raw, fields, 0)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_create_namespace() {
        // Captured from `kubectl create namespace demo` (kubectl 1.32.4).
        let body = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1c\n\x14\n\x04demo\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";
        let v = decode(body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn kubectl_create_token_and_auth_can_i() {
        // Captured (kubectl 1.32.4 -v=9): `kubectl create token margay-node
        // -n margay-system --duration 2h`.
        let token = hex_bytes(
            "6b 38 73 00 0a 28 0a 18 61 75 74 68 65 6e 74 69
             63 61 74 69 6f 6e 2e 6b 38 73 2e 69 6f 2f 76 31
             12 0c 54 6f 6b 65 6e 52 65 71 75 65 73 74 12 1d
             0a 10 0a 00 12 00 1a 00 22 00 2a 00 32 00 38 00
             42 00 12 03 20 a0 38 1a 04 0a 00 12 00 1a 00 22
             00",
        );
        let v = decode(&token).expect("TokenRequest");
        assert_eq!(v["kind"], "TokenRequest");
        assert_eq!(v["spec"]["expirationSeconds"], 7200);
        // `kubectl auth can-i get configmaps/x -n y`.
        let review = hex_bytes(
            "6b 38 73 00 0a 32 0a 17 61 75 74 68 6f 72 69 7a
             61 74 69 6f 6e 2e 6b 38 73 2e 69 6f 2f 76 31 12
             17 53 65 6c 66 53 75 62 6a 65 63 74 41 63 63 65
             73 73 52 65 76 69 65 77 12 3d 0a 10 0a 00 12 00
             1a 00 22 00 2a 00 32 00 38 00 42 00 12 1f 0a 1d
             0a 01 79 12 03 67 65 74 1a 00 22 00 2a 0a 63 6f
             6e 66 69 67 6d 61 70 73 32 00 3a 01 78 1a 08 08
             00 12 00 1a 00 20 00 1a 00 22 00",
        );
        let v = decode(&review).expect("SelfSubjectAccessReview");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "y", "verb": "get", "resource": "configmaps", "name": "x"})
        );
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn errors_not_panics() {
        assert_eq!(decode(b"{}"), Err(ProtoError::NoEnvelope));
        assert!(matches!(
            decode(b"k8s\x00\n\xff\xff"),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"k8s\x00\n\x0a\n\x02v1\x12\x04Node"),
            Err(ProtoError::Unsupported(_))
        ));
        for i in 0..60 {
            let b = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1c\n\x14\n\x04demo\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";
            let _ = decode(&b[..i.min(b.len())]);
        }
    }
}
